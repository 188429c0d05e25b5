"""An ``every=1`` schedule declared by two real schedulers runs once per second, across a
SIGKILL and restart of a real bus (the downtime caught up with one late firing)."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from pathlib import Path

import pytest
from conftest import ROOT, BusProcess, Commands, unit, wait_until
from periodic_tasks import LOG_ENV

TASKS = str(ROOT / "tests" / "periodic_tasks.py")
_MISSED = re.compile(r"every_second: (\d+) firings from (\S+) to (\S+) not run")
_SKIPPED = re.compile(r"every_second: firing at (\S+) skipped")


def stamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def runs(log: Path) -> list[tuple[str, int]]:
    """(job id, attempt) of every run logged, in the order they ran."""
    found = []
    for line in log.read_text().splitlines():
        job_id, attempt, _ = line.split()
        assert job_id.startswith("every_second@")
        found.append((job_id, int(attempt)))
    return found


def accounted(bus_log: str) -> set[float]:
    """The fire times the bus logged as not run (missed, coalesced or skipped)."""
    times: set[float] = set()
    for count, first, last in _MISSED.findall(bus_log):
        start = stamp(first)
        times.update(start + k for k in range(int(count)))
        assert start + int(count) - 1 == stamp(last)
    times.update(stamp(when) for when in _SKIPPED.findall(bus_log))
    return times


async def test_every_1_from_two_schedulers_runs_once_per_second_across_a_bus_kill(
    commands: Commands, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "runs.log"
    log.touch()
    monkeypatch.setenv(LOG_ENV, str(log))
    bus = BusProcess(commands, tmp_path / "bus.db", "--lease", str(3 * unit()))
    await bus.start()
    assert bus.proc is not None
    first_bus = bus.proc
    for name in ("w1", "w2"):
        await commands.start("scheduler.worker", "--tasks", TASKS, "--bus", bus.url, "--name", name)
    await wait_until(lambda: len(runs(log)) >= 3, 20 * unit(), "3 firings run")
    await bus.kill()
    down = len(runs(log))
    # The downtime itself (not a wait for an event): long enough that firings are missed.
    await asyncio.sleep(2.5)
    await bus.start()
    await wait_until(lambda: len(runs(log)) >= down + 5, 20 * unit(), "5 firings after restart")
    bus_log = commands.log_of(first_bus) + commands.log_of(bus.proc)

    done = runs(log)
    assert len(done) == len(set(done)), "no attempt of a firing ran twice"
    # A run whose report died with the bus runs again as a new attempt of the same job
    # (the bus's at-least-once rule); it is still one firing, one job id.
    times = sorted({stamp(job_id.partition("@")[2]) for job_id, _ in done})
    every_second = set(range(round(times[0]), round(times[-1]) + 1))
    not_run = every_second - {round(t) for t in times}
    assert not_run, "the downtime missed firings"
    assert not_run <= {round(t) for t in accounted(bus_log)}, (
        "every fire time not run is logged as missed, coalesced or skipped"
    )
    assert "declared schedules every_second" in bus_log
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # Before the kill and once caught up: once per second. Between them, the downtime
    # (coalesced to one late firing) and the firings skipped while that one waited for
    # its schedulers to come back (max_instances 1), each logged above.
    assert gaps[:2] == [1.0, 1.0] and gaps[-3:] == [1.0, 1.0, 1.0], gaps
