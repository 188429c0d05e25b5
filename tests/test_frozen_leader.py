"""A frozen leader (SIGSTOP: a paused VM, a process stuck in a long pause) is deposed
once its lease runs out, and assigns nothing when it thaws; a live leader under load is
never deposed. Real buses, schedulers and producers on one real PostgreSQL database."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import Commands, unit, wait_until
from test_durability import AttemptLog
from test_failover import TASKS, ElectedBus, attempts_in, leader_of

from scheduler.policy.leadership import EXIT_FENCED

pytestmark = pytest.mark.timeout(60)


def submit(bus_urls: str, prefix: str, count: int, *options: str) -> list[str]:
    """The producer's arguments to submit ``count`` short recorded jobs ``prefix-N``."""
    return [
        "scheduler.producer",
        *f"--bus {bus_urls} -p 0 --task recorded_sleep --priority 0 --runtime 0.01".split(),
        *f"--id-prefix {prefix} --count {count}".split(),
        *options,
    ]


async def test_a_frozen_leader_is_deposed_and_assigns_nothing_when_thawed(
    commands: Commands, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "attempts.log"
    log.touch()
    monkeypatch.setenv("SCHEDBUS_ATTEMPT_LOG", str(log))
    lease = ("--leader-lease", str(2 * unit()))
    first = ElectedBus(commands, postgres_dsn, *lease)
    await first.start()
    await leader_of([first])
    second = ElectedBus(commands, postgres_dsn, *lease)
    await second.start()
    urls = f"{first.url},{second.url}"
    # A scheduler on the leader: once thawed, a leader that was not fenced would hand it
    # the delayed jobs (they fall due while it is frozen), which the new leader runs.
    w0 = await commands.start(
        "scheduler.worker", *f"--tasks {TASKS} -s 2 -t 30 --bus {urls} --name w0".split()
    )
    await wait_until(lambda: "registered with" in commands.log_of(w0), 10 * unit(), "w0 is on")
    code, _ = await commands.run(
        *submit(first.url, "later", 3, "--delay", str(1.5 * unit())), timeout=10 * unit()
    )
    assert code == 0
    assert first.proc is not None
    first.proc.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        await wait_until(second.leads, 15 * unit(), "the standby takes over")
        took = time.monotonic() - frozen_at
        assert "ended its sessions" in second.log()
        await commands.start(
            "scheduler.worker",
            *f"--tasks {TASKS} -s 2 -t 30 --bus {second.url},{first.url} --name w1".split(),
        )
        code, _ = await commands.run(
            *submit(f"{second.url},{first.url}", "after", 1, "--wait"), timeout=20 * unit()
        )
        assert code == 0
        await wait_until(
            lambda: len(AttemptLog(log).read().runs) == 4, 10 * unit(), "the delayed jobs run"
        )
    finally:
        first.proc.send_signal(signal.SIGCONT)
    assert await first.proc.wait() == EXIT_FENCED
    assert "stops leading" in first.log()
    # Every attempt is journaled before it is sent: one attempt per job, run once.
    assert await attempts_in(postgres_dsn) == {
        "later-0": 1, "later-1": 1, "later-2": 1, "after-0": 1
    }  # fmt: skip
    runs = AttemptLog(log).read().runs
    assert Counter({job: len(attempts) for job, attempts in runs.items()}) == Counter(
        {"later-0": 1, "later-1": 1, "later-2": 1, "after-0": 1}
    )
    print(f"frozen leader deposed after {took:.1f} s (lease {lease[1]} s)")


async def test_a_live_leader_under_load_is_never_deposed(
    commands: Commands, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCHEDBUS_ATTEMPT_LOG", str(tmp_path / "attempts.log"))
    # The shortest lease allowed, so a renewal that lags under load would show.
    lease = ("--leader-lease", str(max(1.6, 1.6 * unit())))
    leader = ElectedBus(commands, postgres_dsn, *lease)
    await leader.start()
    await leader_of([leader])
    standby = ElectedBus(commands, postgres_dsn, *lease)
    await standby.start()
    await commands.start(
        "scheduler.worker", *f"--tasks {TASKS} -s 4 -t 30 --bus {leader.url} --name w0".split()
    )
    code, _ = await commands.run(
        *submit(leader.url, "load", 300, "--wait"), timeout=40 * unit()
    )  # fmt: skip
    assert code == 0
    assert leader.leads() and not standby.leads()
    assert "ended its sessions" not in standby.log()
    assert "stops leading" not in leader.log()
