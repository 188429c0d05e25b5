"""Schedules, cancels and broadcast jobs in simulated workloads: the live check of
``test_periodic_e2e`` on the simulator (the same schedule, the same bus restart, the
same accounting of every second), the workload file's lines and their errors, and the
``--every``/``--cron`` generator flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_periodic_e2e import TASKS, accounted, stamp

from scheduler.policy.schedules import firing_id
from scheduler.protocol import CancelReply
from scheduler.simulate.cli import cli
from scheduler.simulate.engine import Simulation
from scheduler.simulate.entries import SimSchedule, SimUnschedule
from scheduler.simulate.fleet import Fleet, FleetEvent, SchedulerSpec
from scheduler.simulate.workload import Generated, Workload, WorkloadError, read_jsonl
from scheduler.simulate.world import Settings
from scheduler.tasks import load_task_modules

START, END = 0.5, 20.5
"""The schedule is added at START and removed at END: it fires at 1, 2, ..., 20."""


def every_second(events: list[FleetEvent]) -> Simulation:
    """The live test's schedule (declared by its task module), on its two schedulers."""
    (spec,) = load_task_modules([TASKS]).schedules()
    entries = (SimSchedule(START, spec), SimUnschedule(END, spec.name))
    workload = Workload(lambda: iter(entries), frozenset({spec.task}), 0, True)
    fleet = Fleet((SchedulerSpec("w1"), SchedulerSpec("w2"))).with_events(events)
    sim = Simulation(workload, fleet, settings=Settings(latency=0.01), check=True)
    sim.run()
    return sim


def firings(sim: Simulation) -> tuple[list[str], list[str]]:
    """The firings started (job ids, in order) and the bus's lines for those not run."""
    assert sim.trace is not None
    started = [str(e[3].id) for e in sim.trace if e[0] == "start"]  # type: ignore[attr-defined]
    lines = [str(e[3].error) for e in sim.trace if e[0] == "skipped"]  # type: ignore[attr-defined]
    return started, lines


def test_every_1_fires_once_a_second_and_each_firing_runs_once() -> None:
    started, lines = firings(every_second([]))
    assert started == [firing_id("every_second", t) for t in range(1, 21)]
    assert not lines


def test_every_1_across_a_bus_restart_as_the_live_test_counts_it() -> None:
    """``test_periodic_e2e``'s checks on the simulator: the downtime misses firings, each
    logged; one late firing runs; then once a second again; nothing runs twice."""
    started, lines = firings(every_second([FleetEvent(5.5, "bus-restart", down=2.5)]))
    assert len(started) == len(set(started)), "no firing ran twice"
    times = sorted(stamp(job_id.partition("@")[2]) for job_id in started)
    not_run = set(range(1, 21)) - {round(t) for t in times}
    assert not_run == {6, 7}, "down from 5.5 to 8: 6 and 7 coalesced into the firing at 8"
    assert not_run <= {round(t) for t in accounted("\n".join(lines))}
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps == [1.0] * 4 + [3.0] + [1.0] * 12
    assert len(started) == 18  # 20 fire times, 2 missed


def test_a_jsonl_workload_with_a_schedule_a_cancel_and_a_broadcast(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    lines = [
        {
            "at": 0,
            "until": 11,
            "schedule": {"name": "t", "task": "sleep", "every": 5, "runtime": 1},
        },
        {"at": 1, "id": "long", "task": "sleep", "runtime": 20, "priority": 3},
        {"at": 2, "cancel": "long"},
        {"at": 3, "task": "sleep", "runtime": 2, "broadcast": True, "id": "all"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines))
    workload = read_jsonl(path)
    assert workload.count == 2 and workload.requests
    sim = Simulation(workload, Fleet((SchedulerSpec("A"), SchedulerSpec("B"))), check=True)
    outcome = sim.run()
    assert sim.trace is not None
    (cancel,) = [e[3] for e in sim.trace if e[0] == "cancel"]
    assert isinstance(cancel, CancelReply) and (cancel.id, cancel.state) == ("long", "running")
    assert outcome.counts["cancelled"] == 1 and outcome.counts["fired"] == 2
    # the broadcast, its runs on A and B, and the firings at 5 and 10 succeed
    assert outcome.counts["succeeded"] == 5 and outcome.unfinished == 0


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ({"at": 1, "cancel": 5}, "cancel: must be a job id"),
        ({"at": 1, "cancel": "x", "task": "sleep"}, "task: a cancel line has only"),
        ({"at": 1, "schedule": {"name": "t", "task": "sleep", "every": 1}}, "until: must be"),
        ({"at": 1, "until": 5, "schedule": {"name": "t", "task": "x", "every": 0}}, "schedule:"),
        ({"at": 1, "until": 5, "schedule": {"name": "t", "task": "x"}}, "schedule.every: give"),
        (
            {"at": 1, "until": 5, "schedule": {"name": "t", "task": "sleep", "every": 1}},
            "schedule.runtime",
        ),
        ({"at": 1, "until": 5, "schedule": {}, "x": 1}, "x: a schedule line has only"),
    ],
)
def test_bad_request_lines_name_the_line_and_field(
    tmp_path: Path, line: dict[str, object], error: str
) -> None:
    path = tmp_path / "w.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(WorkloadError, match=f"w.jsonl:1: {error}"):
        read_jsonl(path)


def test_the_every_flag_adds_a_schedule_until_the_last_submit() -> None:
    generated = Generated(count=5, period=2.0, every=3.0)
    entries = list(generated.workload().jobs())
    assert entries[0] == SimSchedule(0.0, generated.schedule())  # type: ignore[arg-type]
    assert entries[-1] == SimUnschedule(8.0, "periodic")
    with pytest.raises(ValueError, match="--every: give exactly one"):
        Generated(count=5, every=3.0, cron="* * * * *")
    with pytest.raises(ValueError, match="--tz: unknown time zone"):
        Generated(count=5, cron="* * * * *", tz="Nowhere/Else")
    with pytest.raises(ValueError, match="--every/--cron:"):
        Generated(count=5, every=-1.0)


def test_the_cli_reports_firings() -> None:
    args = ["--count", "20", "-p", "1", "--runtime", "0-1", "--every", "2", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["fired"] == 9 and "firings_skipped" not in figures
