"""The simulator: its workloads, fleets, the runs it gives for small worlds whose outcome
is known, and its command (CliRunner, plus one real ``python -m`` run)."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from scheduler.producer.workload import JobMaker, Span, periods
from scheduler.protocol import JobPayload
from scheduler.simulate.cli import cli
from scheduler.simulate.engine import Simulation
from scheduler.simulate.fleet import (
    Fleet,
    FleetEvent,
    SchedulerSpec,
    letter_name,
    parse_event,
    read_fleet,
    uniform,
)
from scheduler.simulate.metrics import percentile
from scheduler.simulate.workload import (
    Generated,
    SimJob,
    Workload,
    WorkloadError,
    read_jsonl,
    read_monitor,
)
from scheduler.simulate.world import Settings

ROOT = Path(__file__).resolve().parent.parent


def only_jobs(workload: Workload) -> list[SimJob]:
    """The jobs of ``workload`` (these workloads have nothing else)."""
    entries = list(workload.jobs())
    jobs = [entry for entry in entries if isinstance(entry, SimJob)]
    assert len(jobs) == len(entries)
    return jobs


def fixed(*jobs: SimJob) -> Workload:
    return Workload(lambda: iter(jobs), frozenset(j.payload.task for j in jobs), len(jobs))


def sleep(at: float, priority: int, runtime: float, **fields: object) -> SimJob:
    return SimJob(at, JobPayload(priority=priority, runtime=runtime, **fields))  # type: ignore[arg-type]


# --- workloads ---------------------------------------------------------------------------


def test_generated_jobs_are_the_producers_for_the_same_seed() -> None:
    rng = random.Random(7)
    maker = JobMaker(Span(1, 4), Span(0, 10), None, rng)
    waits = periods(0.5, True, 0.1, rng)
    expected, at = [], 0.0
    for index in range(20):
        if index:
            at += next(waits)
        expected.append((at, maker.next(index)))
    generated = Generated(20, 0.5, True, 0.1, Span(1, 4), Span(0, 10), seed=7).workload()
    assert [(j.at, j.payload) for j in only_jobs(generated)] == expected
    assert [j.payload for j in only_jobs(generated)] == [p for _, p in expected]  # read again


def test_generated_refuses_a_priority_out_of_range() -> None:
    with pytest.raises(ValueError, match="--priority"):
        Generated(5, priority=Span(0, 11))


def test_a_jobs_file_is_sorted_and_keeps_every_field(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        '{"at": 2, "id": "b", "runtime": 1, "depends_on": ["a"], "fail": true}\n'
        "\n"
        '{"at": 0.5, "id": "a", "task": "resize", "priority": 0, "timeout": 3, "run_at": 4}\n'
    )
    workload = read_jsonl(path)
    first, second = only_jobs(workload)
    assert (first.at, first.payload.job_id, first.payload.run_at) == (0.5, "a", 4)
    assert (second.payload.depends_on, second.fail) == (["a"], True)
    assert workload.tasks == {"sleep", "resize"} and workload.count == 2


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('{"at": 1, "priority": 11, "runtime": 1}', r"jobs.jsonl:1: .*\$\.priority"),
        ('{"runtime": 1}', "jobs.jsonl:1: at: must be a number"),
        ('{"at": 1}', "jobs.jsonl:1: runtime: a sleep job needs one"),
        ('{"at": 1, "runtime": 1, "fail": 1}', "fail: must be true or false"),
        ("[1]", "must be a JSON object"),
        ("{nope", "not JSON"),
    ],
)
def test_a_bad_jobs_line_is_named(tmp_path: Path, line: str, error: str) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(WorkloadError, match=error):
        read_jsonl(path)


def test_a_recorded_run_gives_submit_times_runtimes_and_failures(tmp_path: Path) -> None:
    events = [
        {"event": "accepted", "id": "x", "time": 100.0, "priority": 3, "runtime": 2.0},
        {"event": "accepted", "id": "y", "time": 101.5, "priority": 1, "task": "resize"},
        {"event": "started", "id": "y", "time": 102.0},
        {"event": "failed", "id": "y", "time": 104.5},
        {"event": "succeeded", "id": "x", "time": 103.0, "wall_s": 2.01},
    ]
    path = tmp_path / "run.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    x, y = only_jobs(read_monitor(path))
    assert (x.at, x.payload.priority, x.payload.runtime, x.fail) == (0.0, 3, 2.0, False)
    assert (y.at, y.payload.task, y.payload.runtime, y.fail) == (1.5, "resize", 2.5, True)
    path.write_text('{"id": "x"}\n')
    with pytest.raises(WorkloadError, match="run.jsonl:1: not a monitor --json event"):
        read_monitor(path)


# --- fleets ------------------------------------------------------------------------------


def test_schedulers_are_named_like_spreadsheet_columns() -> None:
    assert [letter_name(i) for i in (0, 1, 25, 26, 27, 701, 702)] == [
        "A", "B", "Z", "AA", "AB", "ZZ", "AAA",
    ]  # fmt: skip
    assert [s.name for s in uniform(3, 2, 5.0).schedulers] == ["A", "B", "C"]


def test_fleet_events_parse_and_refuse_what_they_cannot_read() -> None:
    assert parse_event("kill B at 180") == FleetEvent(180.0, "kill", "B")
    assert parse_event(" stop C at 1.5 ") == FleetEvent(1.5, "stop", "C")
    join = parse_event("join D size 8 at 60", size=2, timeout=None)
    assert join == FleetEvent(60.0, "join", "D", SchedulerSpec("D", 8, None))
    assert parse_event("join E at 1", size=2).spec == SchedulerSpec("E", 2)
    assert parse_event("bus-restart for 3 at 60") == FleetEvent(60.0, "bus-restart", down=3.0)
    assert parse_event("bus-restart at 60").down == 1.0
    for bad in ("explode B at 3", "kill B", "kill B size 3 at 4", "kill B at soon"):
        with pytest.raises(ValueError, match="expected 'kill NAME at T'"):
            parse_event(bad)


def test_a_fleet_file_gives_mixed_schedulers_and_events(tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    path.write_text(
        json.dumps(
            {
                "schedulers": [
                    {"name": "gpu", "size": 2, "tasks": ["train"], "count": 2},
                    {"name": "cpu", "size": 8, "timeout": None},
                ],
                "events": ["kill gpu2 at 30"],
            }
        )
    )
    fleet = read_fleet(path, timeout=9.0)
    assert fleet.schedulers == (
        SchedulerSpec("gpu1", 2, 9.0, frozenset({"train"})),
        SchedulerSpec("gpu2", 2, 9.0, frozenset({"train"})),
        SchedulerSpec("cpu", 8, None),
    )
    assert fleet.events == (FleetEvent(30.0, "kill", "gpu2"),)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"schedulers": [{"size": 2}]}, r"schedulers\[0\]: name"),
        ({"schedulers": [{"name": "a", "size": 0}]}, r"schedulers\[0\]: size: must be"),
        ({"schedulers": [{"name": "a", "tasks": "x"}]}, r"schedulers\[0\]: tasks"),
        ({"schedulers": [{"name": "a", "timeout": "x"}]}, r"schedulers\[0\]: timeout"),
        ({"schedulers": [{"name": "a"}, {"name": "a"}]}, "names must be unique"),
        ({"schedulers": [{"name": "a"}], "events": [3]}, "events: must be a list"),
        ({"nodes": []}, "schedulers: must be a list"),
    ],
)
def test_a_bad_fleet_file_is_named(tmp_path: Path, data: object, error: str) -> None:
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=error):
        read_fleet(path)


# --- runs whose outcome is known ----------------------------------------------------------


def test_an_urgent_job_evicts_and_the_evicted_job_runs_again() -> None:
    workload = fixed(sleep(0.0, 9, 10.0), sleep(1.0, 0, 1.0))
    fleet = Fleet((SchedulerSpec("A", 1, 60.0),))
    outcome = Simulation(workload, fleet, settings=Settings(latency=0.0, stop_s=0.0)).run()
    assert outcome.counts["evicted"] == 1 and outcome.counts["succeeded"] == 2
    assert outcome.makespan == pytest.approx(12.0)  # 1 s of the first run is lost
    urgent, low = outcome.waits
    assert (urgent.priority, urgent.max) == (0, 0.0)
    assert (low.priority, low.count) == (9, 2) and low.max == pytest.approx(1.0)
    assert outcome.nodes[0].utilisation == pytest.approx(12.0 / 12.0)


def test_an_idle_scheduler_steals_from_a_queue() -> None:
    burst = [sleep(0.0, 5, 4.0) for _ in range(4)]
    fleet = Fleet((SchedulerSpec("A", 1, 60.0),)).with_events(
        [FleetEvent(1.0, "join", "B", SchedulerSpec("B", 1, 60.0))]
    )
    settings = Settings(latency=0.001)
    stolen = Simulation(fixed(*burst), fleet, settings=settings).run()
    assert stolen.steals >= 1 and stolen.makespan < 12.0
    from scheduler.policy.dispatch.config import DispatchConfig

    alone = Simulation(fixed(*burst), fleet, DispatchConfig(steal="off"), settings).run()
    assert alone.steals == 0 and alone.makespan == pytest.approx(16.0, abs=0.1)


def test_a_killed_scheduler_loses_its_jobs_when_its_lease_expires() -> None:
    fleet = uniform(2, 1, 60.0).with_events([parse_event("kill A at 1")])
    workload = fixed(sleep(0.0, 5, 10.0))
    outcome = Simulation(workload, fleet, settings=Settings(latency=0.0)).run()
    assert outcome.counts["requeued"] == 1 and outcome.counts["succeeded"] == 1
    # Its lease (5 s) ran from its last sign of life, the started report at 0.
    assert outcome.makespan == pytest.approx(5.0 + 10.0, abs=0.01)


def test_a_clean_stop_requeues_at_once() -> None:
    fleet = uniform(2, 1, 60.0).with_events([parse_event("stop A at 1")])
    outcome = Simulation(fixed(sleep(0.0, 5, 10.0)), fleet, settings=Settings(latency=0.0)).run()
    assert outcome.counts["requeued"] == 1
    assert outcome.makespan == pytest.approx(11.0, abs=0.01)


def test_timeouts_are_retried_then_dead() -> None:
    job = sleep(0.0, 5, 5.0, timeout=1.0, max_retries=2, retry_backoff=0.0)
    outcome = Simulation(fixed(job), uniform(1, 1, 60.0), settings=Settings(latency=0.0)).run()
    assert outcome.timeouts == 3 and outcome.counts["retrying"] == 2
    assert outcome.counts["dead"] == 1


def test_failures_come_from_the_workload() -> None:
    job = SimJob(0.0, JobPayload(priority=1, runtime=1.0), fail=True)
    outcome = Simulation(fixed(job), uniform(1, 1, 60.0)).run()
    assert outcome.counts["failed"] == 1


def test_a_bus_restart_keeps_running_jobs_and_ends_each_once() -> None:
    jobs = [sleep(0.1 * i, i % 3, 2.0) for i in range(6)]
    fleet = uniform(2, 2, 60.0).with_events([parse_event("bus-restart for 0.5 at 1")])
    outcome = Simulation(fixed(*jobs), fleet, settings=Settings(latency=0.001)).run()
    assert outcome.counts["succeeded"] == 6 and outcome.unfinished == 0
    assert outcome.counts["fleet_bus-restart"] == 1


def test_a_job_nobody_serves_is_left_unfinished_and_the_run_ends() -> None:
    job = SimJob(0.0, JobPayload(priority=1, runtime=1.0, task="resize"))
    fleet = Fleet((SchedulerSpec("A", 1, 60.0, frozenset({"sleep"})),))
    outcome = Simulation(fixed(job), fleet).run()
    assert outcome.unfinished == 1 and outcome.jobs == 1


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [50.0, 90.0, 99.0, 100.0]
    assert percentile([3.0], 99) == 3.0


# --- the command ---------------------------------------------------------------------------


def test_the_command_prints_tables_and_json() -> None:
    runner = CliRunner()
    args = ["--count", "200", "-p", "0.05", "--runtime", "0.1-1", "--schedulers", "2"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Wait for a slot, by priority" in result.output and "utilisation" in result.output
    result = runner.invoke(cli, [*args, "--json"])
    figures = json.loads(result.output)
    assert figures["jobs"] == 200 and figures["finals"] == {"succeeded": 200}
    assert {w["priority"] for w in figures["waits_s"]} <= set(range(11))
    assert [s["name"] for s in figures["schedulers"]] == ["A", "B"]


def test_compare_runs_variants_on_the_same_workload() -> None:
    args = ["--count", "300", "-p", "0.02", "--runtime", "0.1-1", "--json"]
    result = CliRunner().invoke(cli, [*args, "--compare", "--steal off", "--compare", "-s 1"])
    assert result.exit_code == 0, result.output
    base, off, small = json.loads(result.output)
    assert (base["variant"], off["variant"], small["variant"]) == (None, "--steal off", "-s 1")
    assert base["jobs"] == off["jobs"] == small["jobs"] == 300
    assert off["steals"] == 0 and small["makespan_s"] > base["makespan_s"]
    table = CliRunner().invoke(cli, args[:-1] + ["--compare", "--steal tail"])
    assert "Variants on the same workload" in table.output


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--event", "explode A at 1"], "expected 'kill NAME at T'"),
        (["--compare", "--steal sideways"], "--compare '--steal sideways'"),
        (["--priority", "0-11"], "--priority must be within 0-10"),
    ],
)
def test_bad_options_are_named(args: list[str], error: str) -> None:
    result = CliRunner().invoke(cli, ["--count", "5", *args])
    assert result.exit_code == 2 and error in result.output


def test_plot_draws_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "sim.png"
    args = ["--count", "200", "-p", "0.05", "--runtime", "0.1-1", "--plot", str(out)]
    result = CliRunner().invoke(cli, [*args, "--compare", "--steal off"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG")


def test_plot_without_matplotlib_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name)
    )
    result = CliRunner().invoke(cli, ["--count", "5", "--plot", "x.png"])
    assert result.exit_code == 1 and "pip install 'schedbus[plot]'" in result.output


def test_python_m_scheduler_simulate_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scheduler.simulate", "--count", "50", "-p", "0.1", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    figures = json.loads(result.stdout)
    # Runtimes 3-15 s against the default -t 10: some time out, as they would live.
    assert sum(figures["finals"].values()) == 50 and figures["timeouts"] > 0
