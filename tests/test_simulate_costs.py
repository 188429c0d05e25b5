"""The simulator's start and exit costs (what a live job pays beyond its runtime) and
their calibration from a recorded run: pure, on tiny worlds whose times are known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from scheduler.protocol import JobEvent, JobPayload
from scheduler.simulate.cli import cli
from scheduler.simulate.costs import CalibrationError, calibrate
from scheduler.simulate.engine import Simulation
from scheduler.simulate.fleet import Fleet, JobCosts, SchedulerSpec, read_fleet, uniform
from scheduler.simulate.workload import SimJob, Workload
from scheduler.simulate.world import Settings

START, EXIT = 0.25, 0.125
"""Costs that are exact in binary: the times below compare with ==."""


def run(jobs: list[tuple[float, int, float]], fleet: Fleet) -> list[tuple[float, str, str]]:
    """``(time, event, job index)`` of every event of ``jobs`` (at, priority, runtime) run on
    ``fleet`` with no message latency, checked after every step."""
    sims = [SimJob(at, JobPayload(priority=p, runtime=r)) for at, p, r in jobs]
    workload = Workload(lambda: iter(sims), frozenset({"sleep"}), len(sims))
    sim = Simulation(workload, fleet, settings=Settings(latency=0.0, stop_s=0.0), check=True)
    outcome = sim.run()
    assert outcome.unfinished == 0
    assert sim.trace is not None
    events = [entry[2] for entry in sim.trace if entry[0] == "event"]
    order = [e.id for e in events if isinstance(e, JobEvent) and e.event == "accepted"]
    return [
        (e.time, e.event, str(order.index(e.id)))
        for e in events
        if isinstance(e, JobEvent) and e.event in ("started", "evicted", "succeeded")
    ]


def test_a_job_starts_its_start_cost_late_and_frees_its_slot_its_exit_cost_late() -> None:
    one_slot = uniform(1, 1, 60.0, JobCosts(START, EXIT))
    got = run([(0.0, 5, 1.0), (0.0, 5, 1.0)], one_slot)
    first_end = START + 1.0 + EXIT
    assert got == [
        (START, "started", "0"),
        (first_end, "succeeded", "0"),
        (first_end + START, "started", "1"),
        (first_end + START + 1.0 + EXIT, "succeeded", "1"),
    ]
    # The waits shift by the costs: the second job waited a whole costed run, then a fork.
    assert run([(0.0, 5, 1.0), (0.0, 5, 1.0)], uniform(1, 1, 60.0))[2] == (1.0, "started", "1")


def test_a_scheduler_forks_one_job_at_a_time() -> None:
    got = run([(0.0, 5, 1.0), (0.0, 5, 1.0)], uniform(1, 2, 60.0, JobCosts(START, 0.0)))
    assert [(t, e) for t, e, _ in got if e == "started"] == [
        (START, "started"),
        (2 * START, "started"),
    ]


def test_an_eviction_waits_for_the_fork_under_way() -> None:
    # The urgent job arrives while the first one's fork is under way: it is forked after
    # that one, and the first is stopped only then, as on a live scheduler, whose event
    # loop forks synchronously and stops processes in tasks that run after.
    got = run([(0.0, 8, 5.0), (0.1, 0, 1.0)], uniform(1, 1, 60.0, JobCosts(START, 0.0)))
    assert got[:3] == [
        (START, "started", "0"),
        (2 * START, "started", "1"),
        (2 * START, "evicted", "0"),
    ]


def test_a_message_from_the_bus_is_taken_its_dispatch_cost_late() -> None:
    got = run([(0.0, 5, 1.0), (0.0, 5, 1.0)], uniform(1, 2, 60.0, JobCosts(dispatch=START)))
    assert [(t, e) for t, e, _ in got if e == "started"] == [(START, "started")] * 2


def test_an_eviction_keeps_the_scheduler_busy_before_it_forks_again() -> None:
    # As live: the job that evicts reports started late, and the evicted one ends after.
    got = run([(0.0, 8, 5.0), (1.0, 0, 1.0)], uniform(1, 1, 60.0, JobCosts(evict=START)))
    assert got[:3] == [
        (0.0, "started", "0"),
        (1.0 + START, "started", "1"),
        (1.0 + START, "evicted", "0"),
    ]


def test_drawn_costs_come_from_the_samples_given() -> None:
    costs = JobCosts(START, 0.0, start_draws=(0.5, 1.0), exit_draws=(0.0,))
    got = run([(3.0 * i, 5, 0.25) for i in range(6)], uniform(1, 1, 60.0, costs))
    lags = {t - 3.0 * int(i) for t, e, i in got if e == "started"}
    assert lags <= {0.5, 1.0} and len(lags) == 2


def test_costs_are_checked_and_a_fleet_file_may_give_its_own(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="start_cost must be >= 0"):
        JobCosts(-1.0)
    with pytest.raises(ValueError, match="exit_cost: every drawn cost"):
        JobCosts(exit_draws=(-0.1,))
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"schedulers": [{"name": "a", "start_cost": 0.5}, {"name": "b"}]}))
    default = JobCosts(0.1, 0.2, start_draws=(0.1,))
    fleet = read_fleet(path, 9.0, default)
    assert fleet.schedulers == (
        SchedulerSpec("a", 5, 9.0, None, JobCosts(0.5, 0.2)),
        SchedulerSpec("b", 5, 9.0, None, default),
    )
    path.write_text(json.dumps({"schedulers": [{"name": "a", "exit_cost": "1ms"}]}))
    with pytest.raises(ValueError, match=r"schedulers\[0\]: exit_cost: must be seconds"):
        read_fleet(path)


def event(
    kind: str, job: str, at: float, where: str | None = None, **fields: object
) -> dict[str, object]:
    return {"event": kind, "id": job, "time": at, "priority": 5, "scheduler": where, **fields}


RECORDED = [
    event("accepted", "a", 0.0, runtime=1.0),
    event("assigned", "a", 0.0, "S"),
    event("accepted", "b", 0.1, runtime=2.0),
    event("assigned", "b", 0.1, "S"),
    event("started", "a", 0.014, "S"),  # at once: a dispatch sample
    event("succeeded", "a", 1.020, "S"),  # exit: 1.020 - 0.014 - 1.0
    event("started", "b", 1.0205, "S"),  # waited in S's queue: a fork sample
    event("evicted", "b", 1.5, "S"),  # stopped: no exit sample
    event("assigned", "b", 1.6, "T"),
    event("started", "b", 1.618, "T"),  # at once: a dispatch sample
    event("succeeded", "b", 3.622, "T"),  # exit: 3.622 - 1.618 - 2.0
]

NONE_AT_ONCE = [
    event("accepted", "a", 0.0, runtime=1.0),
    event("assigned", "a", 0.0, "S"),
    event("succeeded", "x", 0.001, "S"),  # a slot freed: a may have waited for it
    event("started", "a", 0.002, "S"),
    event("succeeded", "a", 1.01, "S"),
]


def test_calibration_reads_the_costs_off_a_recorded_run() -> None:
    found = calibrate(list(reversed(RECORDED)), latency=0.001)
    assert found.start_samples == pytest.approx((0.0005,))
    assert found.exit_samples == pytest.approx((0.006, 0.004))
    # started - assigned - 2 * latency - the fork
    assert found.dispatch_samples == pytest.approx((0.0115, 0.0155))
    costs = (found.start_cost, found.exit_cost, found.dispatch_cost)
    assert costs == pytest.approx((0.0005, 0.005, 0.0135))
    assert found.costs() == JobCosts(*costs[:2], dispatch=costs[2])
    spread = found.costs(spread=True, seed=3)
    assert spread.dispatch_draws == found.dispatch_samples and spread.seed == 3
    with pytest.raises(CalibrationError, match="exit cost: no attempt"):
        calibrate(RECORDED[:5], latency=0.0)
    with pytest.raises(CalibrationError, match="dispatch cost: no attempt"):
        calibrate(NONE_AT_ONCE, latency=0.0)


def test_an_eviction_is_read_as_the_extra_time_its_start_took() -> None:
    evicting = [
        event("accepted", "a", 0.0, runtime=5.0),
        event("assigned", "a", 0.0, "S"),
        event("started", "a", 0.01, "S"),  # at once, evicting none
        event("accepted", "u", 1.0, runtime=1.0),
        event("assigned", "u", 1.0, "S"),
        event("started", "u", 1.03, "S"),  # at once, in a's place
        event("evicted", "a", 1.031, "S"),
        event("succeeded", "u", 2.04, "S"),
    ]
    found = calibrate(evicting, latency=0.0)
    assert found.dispatch_samples == pytest.approx((0.01,))
    assert found.evict_cost == pytest.approx(0.02) and found.exit_cost == pytest.approx(0.01)
    assert found.costs(spread=True).evict == pytest.approx(0.02)


def test_a_recording_that_never_queued_puts_the_fork_in_the_dispatch_cost() -> None:
    found = calibrate(RECORDED[:6], latency=0.0)
    assert found.start_cost == 0.0 and found.dispatch_cost == pytest.approx(0.014)


def test_the_command_takes_costs_from_a_recording(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in RECORDED))
    args = ["--replay", str(path), "--schedulers", "1", "-s", "1", "--latency", "0.001", "--json"]
    fixed = ["--compare", "--dispatch-cost 0.0135"]
    result = CliRunner().invoke(cli, [*args, "--costs-from", str(path), *fixed])
    assert result.exit_code == 0, result.output
    told = "start 0.50 ms (1 samples), exit 5.00 ms (2 samples), dispatch 13.50 ms (2 samples)"
    assert told in result.stderr
    drawn, same = ({w["priority"]: w for w in run["waits_s"]} for run in json.loads(result.stdout))
    # With the medians fixed (the variant that sets one): a waited its dispatch, its fork
    # and the two ways; b (submitted at 0.1) waited in the queue for a's costed run,
    # then its own fork.
    assert same[5]["p50"] == pytest.approx(0.001 + 0.0135 + 0.0005 + 0.001)
    a_ends = 0.001 + 0.0135 + 0.0005 + 1.0 + 0.005
    assert same[5]["max"] == pytest.approx(a_ends + 0.0005 + 0.001 - 0.1)
    # Drawn from the samples: a's dispatch is one of those recorded.
    assert drawn[5]["p50"] - 0.0025 in (pytest.approx(0.0115), pytest.approx(0.0155))
    path.write_text("".join(json.dumps(e) + "\n" for e in RECORDED[:5]))
    bad = CliRunner().invoke(cli, [*args, "--costs-from", str(path)])
    assert bad.exit_code == 2
    assert f"--costs-from {path}: exit cost: no attempt" in bad.stderr
