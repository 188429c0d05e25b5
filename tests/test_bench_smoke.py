"""The benchmark harness's pure helpers (``bench/``): no processes, no sockets, no timing."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import pytest

# bench/ sits at the repo root, beside the package; it is not installed.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import cluster, disk, fanout, ingest, profile, stats, system  # noqa: E402
from bench.run import FIGURES, build_report, selected  # noqa: E402
from scheduler import codec, protocol  # noqa: E402


def test_percentile_interpolates_like_numpy() -> None:
    assert stats.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert stats.percentile([5.0], 99) == 5.0
    assert stats.percentile(list(map(float, range(101))), 99) == 99.0
    with pytest.raises(ValueError):
        stats.percentile([], 50)


def test_summary_rate_and_ratio() -> None:
    found = stats.summary([1.0, 2.0, 3.0])
    assert found["p50"] == 2.0 and found["n"] == 3 and found["max"] == 3.0
    assert stats.rate(10, 4.0) == 2.5
    assert stats.ratio(300.0, 150.0) == 2.0
    assert stats.ratio(300.0, None) is None
    assert stats.ratio(300.0, 0.0) is None


def test_the_e2e_ratio_is_the_lower_of_the_paired_and_the_best_round_estimates() -> None:
    # The rounds of the 78d6b8b run: a raw round slowed alone made the pairs read 0.82x.
    e2e, raw = [610.4, 552.7, 601.5], [687.7, 940.7, 737.9]
    assert stats.cautious_ratio(e2e, raw) == {"ratio": 0.65, "paired": 0.82, "best": 0.65}
    # One slow e2e round: the pairs' median and the best rounds both leave it out.
    steady = stats.cautious_ratio([650.0, 400.0, 660.0], [950.0, 940.0, 960.0])
    assert steady == {"ratio": 0.68, "paired": 0.68, "best": 0.69}
    for bad in (([], []), ([1.0], [1.0, 2.0])):
        with pytest.raises(ValueError):
            stats.cautious_ratio(*bad)


def test_goals_are_checked_against_dotted_keys() -> None:
    results = {
        "e2e_vs_raw_ratio": 0.7,
        "peers": {"rq": {"ours_ratio": 2.0}},
        "submit_to_start_ms": {"p50": 2.0, "p99": 9.0},
        "eviction_ms": {"error": "boom"},
    }
    goals = stats.check_goals(results)
    assert goals["e2e_vs_raw_ratio"]["met"] is True
    assert goals["peers.rq.ours_ratio"]["met"] is False
    assert goals["submit_to_start_ms.p50"]["met"] is True
    assert goals["eviction_ms.p50"]["met"] is None
    assert goals["ingest_jobs_per_s"]["met"] is None


def test_table_shows_figures_skips_and_goals() -> None:
    results = {
        "e2e_jobs_per_s": 1234.5,
        "peers": {"rq": {"jobs_per_s": 150.0, "ours_ratio": 8.2}, "arq": {"skipped": "no"}},
        "eviction_ms": {"p50": 4.0, "p99": 8.0},
    }
    table = stats.render_table(stats.table_rows(results))
    assert "1,234" in table and "150 jobs/s (ours 8.2x)" in table
    assert "skipped: no" in table and "eviction p50 <= 10 ms: met" in table
    assert stats.render_markdown(stats.table_rows(results)).startswith("| figure |")


def test_state_options_point_state_files_into_the_scratch_dir(tmp_path: Path) -> None:
    help_text = (
        "Options:\n"
        "  --port INTEGER RANGE  TCP port.\n"
        "  --db PATH             SQLite journal.\n"
        "  --log-file FILE       Where to log.\n"
    )
    assert system.state_options(help_text, tmp_path) == ["--db", str(tmp_path / "db")]
    wanted = {"--max-evictions": "1000", "--lease": "5"}
    assert system.known_options("  --max-evictions INTEGER", wanted) == ["--max-evictions", "1000"]


def test_ingest_frames_decode_as_submits() -> None:
    frames = ingest.single_frames(3, start_ref=7)
    decoded = [codec.decode_client(frame) for frame in frames]
    assert [m.ref for m in decoded if isinstance(m, protocol.JobRequest)] == [7, 8, 9]
    bulk = ingest.bulk_frames(2500, batch=1000)
    assert [size for _, size in bulk] == [1000, 1000, 500]
    first = msgspec.json.decode(bulk[0][0])
    assert first["cmd"] == "submit_many" and len(first["jobs"]) == 1000


def test_profile_summary_separates_idle_and_trunk() -> None:
    text = "\n".join(
        [
            "main (a.py:1);EpollSelector.select (selectors.py:9) 50",
            "main (a.py:1);JobProcess.start (scheduler/worker/process.py:3);"
            "Popen._launch (multiprocessing/popen_fork.py:2) 30",
            "main (a.py:1);emit (logging/__init__.py:5) 20",
            "garbage",
        ]
    )
    found = profile.summarize(text)
    assert found["samples"] == 100 and found["idle_pct"] == 50.0
    assert found["self_pct"]["Popen._launch (multiprocessing/popen_fork.py)"] == 60.0
    assert "main (?)" not in found["inclusive_pct"]
    assert found["components_pct"]["fork: JobProcess.start"] == 60.0
    assert found["components_pct"]["logging (all)"] == 40.0
    assert profile.parse_frame("send (ws/x.py:4)") == ("send", "ws/x.py")


def test_profile_components_name_code_that_exists() -> None:
    """Each of our components names a file of this tree and, where it names a function,
    one defined there: a module moved or renamed must not leave its share at zero."""
    for label, fragment, func in profile.COMPONENTS:
        if not fragment.startswith("scheduler/"):
            continue
        found = ROOT / fragment
        assert found.exists(), label
        if func:
            owner, _, name = func.rpartition(".")
            source = found.read_text()
            assert f"def {name}(" in source and f"class {owner}" in source, label


def test_fanout_spread_and_figure_selection() -> None:
    assert fanout.assigned_spread('ready 2\n{"a": 3, "b": 5}\n') == {"min": 3, "max": 5}
    assert fanout.assigned_spread("ready 2\n") is None
    assert selected(None, skip_peers=True) == [f for f in FIGURES if f != "peers"]
    assert selected("peers,e2e", skip_peers=False) == ["e2e", "peers"]
    with pytest.raises(Exception, match="unknown figure"):
        selected("e2e,nope", skip_peers=False)


def test_report_has_how_and_goals() -> None:
    from bench.run import QUICK

    report = build_report(QUICK, ["e2e"], {"e2e_jobs_per_s": 10.0}, {"cpus": 2}, (0.0, 1.0))
    assert report["quick"] is True and report["machine"] == {"cpus": 2}
    assert "e2e_jobs_per_s" in report["how"] and "goals" in report and report["notes"]


def test_cluster_ideal_and_greedy_makespans() -> None:
    runtimes = cluster.burst_runtimes(50, 0.4, 1.6, seed=9)
    assert runtimes == cluster.burst_runtimes(50, 0.4, 1.6, seed=9)
    assert all(0.4 <= r <= 1.6 for r in runtimes) and len(set(runtimes)) > 40
    assert cluster.ideal_makespan([1.0, 1.0, 1.0, 3.0], 6) == 3.0  # the longest job
    assert cluster.ideal_makespan([2.0] * 12, 6) == 4.0  # the work spread evenly
    with pytest.raises(ValueError):
        cluster.ideal_makespan([1.0], 0)
    # Work left at t0 = 10: not started, running for 0.5 s, finished before t0.
    assert cluster.work_left(2.0, None, 10.0) == 2.0
    assert cluster.work_left(2.0, 9.5, 10.0) == 1.5
    assert cluster.work_left(2.0, 5.0, 10.0) == 0.0
    assert cluster.work_left(2.0, 10.5, 10.0) == 2.0
    # Two slots still busy for 1 s and 2 s, four free; FIFO fills the earliest free slot.
    assert cluster.greedy_makespan([1.0, 2.0], [3.0] * 4 + [1.0], 6) == 3.0
    assert cluster.greedy_makespan([], [1.0, 1.0, 1.0], 2) == 2.0
    with pytest.raises(ValueError):
        cluster.greedy_makespan([1.0, 1.0, 1.0], [], 2)


def test_cluster_refill_gaps_registration_and_victim() -> None:
    # Ends at 1 and 2 are refilled 0.01 s and 0.02 s later; the end at 3 has no later start.
    assert cluster.refill_gaps([2.0, 1.0, 3.0], [0.0, 1.01, 2.02]) == pytest.approx([0.01, 0.02])
    assert cluster.refill_gaps([1.0], []) == []
    log = (
        "2024-05-01 10:00:00,100 INFO    scheduler.bus.server: 127.0.0.1:5: registered as s2 "
        "(protocol 2, new; 0 attempts held, 2 told to stop, 0 jobs requeued)\n"
        "2024-05-01 10:00:01,250 INFO    scheduler.bus.server: 127.0.0.1:6: registered as s22 "
        "(protocol 2, new; 0 attempts held, 0 told to stop, 0 jobs requeued)\n"
    )
    s2 = cluster.registered_at(log, "s2")
    s22 = cluster.registered_at(log, "s22")
    assert s2 is not None and s22 is not None and s22 - s2 == pytest.approx(1.15)
    assert cluster.registered_at(log, "s3") is None
    assert cluster.latest_started({"a": 1.0, "b": 3.0, "c": 2.0}) == "b"
    assert cluster.latest_started({}) is None


def test_cluster_figures_have_goals_a_row_and_how() -> None:
    from bench.run import HOW

    results = {
        "cluster_makespan": {
            "makespan_s": 16.2,
            "ideal_s": 15.0,
            "ratio": 1.08,
            "jobs": 90,
            "steals": 60,
        },
        "cluster_eviction_ms": {"p50": 4.0, "p99": 12.0},
    }
    goals = stats.check_goals(results)
    assert goals["cluster_makespan.ratio"]["met"] is True
    assert goals["cluster_eviction_ms.p50"]["met"] is True
    table = stats.render_table(stats.table_rows(results))
    assert "16.2 s vs ideal 15.0 s (1.08x), 90 jobs, 60 steals" in table
    assert "cluster eviction p50 <= 10 ms: met" in table
    assert {"cluster_makespan", "cluster_eviction_ms"} <= HOW.keys()
    assert "cluster" in FIGURES and selected("cluster", skip_peers=True) == ["cluster"]


def test_fleet_helpers_scale_split_and_take_out_idle_cpu() -> None:
    from bench import fleet

    # 0.2 s of bus CPU over 1 s for 1000 jobs, 5% of a core idle: 150 us per job.
    assert fleet.net_cpu_us_per_job(0.2, 0.05, 1.0, 1000) == 150.0
    assert fleet.net_cpu_us_per_job(0.01, 0.5, 1.0, 10) == 0.0
    with pytest.raises(ValueError):
        fleet.net_cpu_us_per_job(0.1, 0.0, 1.0, 0)
    assert fleet.scaling_ratio({1: 100.0, 10: 110.0, 1000: 150.0}) == 1.5
    assert fleet.scaling_ratio({1: 100.0}) is None
    assert fleet.scaling_ratio({1: 0.0, 10: 1.0}) is None
    assert fleet.split_jobs(23, 10) == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    with pytest.raises(ValueError):
        fleet.split_jobs(5, 0)
    found = {"jobs": 1000, "dispatch_jobs_per_s": 1000.0, "bus_cpu_us_per_job": 200.0}
    row = fleet.dispatch_row(10, [found, found | {"bus_cpu_us_per_job": 240.0}, found], 0.05)
    assert row["bus_cpu_us_per_job"] == 200.0 and row["rounds"] == 3
    assert row["bus_cpu_us_per_job_rounds"] == [200.0, 240.0, 200.0]
    assert row["bus_cpu_us_per_job_net_of_idle"] == 150.0
    with pytest.raises(ValueError):
        fleet.dispatch_row(10, [], 0.05)
    small = row | {"schedulers": 1, "bus_cpu_us_per_job_rounds": [100.0, 120.0, 150.0]}
    summary = fleet.dispatch_summary([small, row | {"schedulers": 1000}])
    # Round by round: 2.0, 2.0, 1.33; their median, not the ratio of the medians (1.67).
    assert summary["cpu_ratio_largest_vs_1"] == 2.0 and len(summary["points"]) == 2
    assert fleet.paired_ratio({1: [100.0, 120.0, 100.0], 1000: [150.0, 150.0, 170.0]}) == 1.5
    assert fleet.paired_ratio({1: [0.0], 1000: [1.0]}) is None
    with pytest.raises(ValueError):
        fleet.paired_ratio({1: [1.0, 2.0], 1000: [1.0]})


def test_heavy_variants_parse_and_ratios() -> None:
    from bench import heavy

    assert heavy.parse_variant("warm=--warm 100") == ("warm", ("--warm", "100"))
    assert heavy.parse_variant("fork_server") == ("fork_server", ())
    for bad in ("=--warm 1", "a b=--x"):
        with pytest.raises(ValueError, match="NAME=OPTIONS"):
            heavy.parse_variant(bad)
    ours: dict[str, stats.Json] = {
        "fork": {"jobs_per_s": 300.0},
        "warm": {"jobs_per_s": 600.0},
        "x": {"skipped": "y"},
    }
    assert heavy.best_rate(ours) == 600.0 and heavy.best_rate({}) is None
    peers: dict[str, stats.Json] = {"celery": {"jobs_per_s": 300.0}, "rq": {"skipped": "no"}}
    assert heavy.ratios(ours, peers) == {"fork": {"celery": 1.0}, "warm": {"celery": 2.0}, "x": {}}


def test_peer_drivers_serve_the_job_they_are_told(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.peers import common

    monkeypatch.delenv(common.TASK_ENV, raising=False)
    assert common.task_name() == "noop" and common.job_function() is common.noop
    monkeypatch.setenv(common.TASK_ENV, "nope")
    with pytest.raises(SystemExit, match="choose from noop, heavy"):
        common.task_name()


def test_plot_panels_take_what_ran_and_leave_out_the_rest() -> None:
    from bench import plot

    report = {
        "e2e_jobs_per_s": 400.0,
        "e2e_warm_jobs_per_s": 900.0,
        "raw_fork_jobs_per_s": {"error": "boom"},
        "peers": {"rq": {"jobs_per_s": 200.0}, "arq": {"skipped": "no"}},
        "heavy": {"ours": {"fork": {"jobs_per_s": 80.0}}, "peers": {"skipped": "quick"}},
        "fleet_dispatch": {"points": [{"schedulers": 1, "bus_cpu_us_per_job": 180.0}]},
        "ingest_many_producers": {"jobs_per_s": 17000.0, "bulk_jobs_per_s": {"error": "x"}},
        "machine": {"code": {"commit": "abc1234"}},
    }
    found = plot.panels(report)
    assert found.noop == [("ours", 400.0), ("ours warm", 900.0), ("rq", 200.0)]
    assert found.heavy == [("ours fork", 80.0)]
    assert found.fleet == [(1, 180.0)]
    assert found.ingest == [("10 producers", 17000.0)]
    assert "abc1234" in found.title
    assert plot.panels({}) == plot.Panels(title="schedbus bench, ?, commit None")


def test_plot_draws_a_png_beside_the_json(tmp_path: Path) -> None:
    from bench import plot  # matplotlib is in the test extra: this never skips

    results = tmp_path / "bench-results.json"
    results.write_text('{"e2e_jobs_per_s": 400, "peers": {"rq": {"jobs_per_s": 200}}}')
    written = plot.write_png(results)
    assert written == tmp_path / "bench-results.png"
    assert written.read_bytes().startswith(b"\x89PNG")


def test_the_file_create_cost_is_measured_and_leaves_nothing(tmp_path: Path) -> None:
    assert disk.file_create_us(tmp_path, files=5, rounds=1) > 0
    assert list(tmp_path.iterdir()) == []


def test_the_warm_heavy_and_bus_goals_are_checked_and_shown() -> None:
    results = {
        "e2e_cpu_ms_per_job": {"bus": 0.3, "scheduler": 0.4},
        "e2e_warm_jobs_per_s": 3000.0,
        "peers": {
            "rq": {"jobs_per_s": 150.0},
            "dramatiq": {"jobs_per_s": 2500.0},
            "arq": {"skipped": "no redis"},
        },
        "heavy": {
            "ours": {"fork_server": {"jobs_per_s": 80.0}, "warm": {"jobs_per_s": 300.0}},
            "peers": {"celery": {"jobs_per_s": 280.0}},
            "ours_ratio": {"fork_server": {"celery": 0.29}, "warm": {"celery": 1.07}},
        },
    }
    derived = stats.warm_vs_fastest_peer(results)
    assert derived == {"ratio": 1.2, "dramatiq_jobs_per_s": 2500.0}
    results["warm_vs_fastest_peer"] = derived
    goals = stats.check_goals(results)
    assert goals["e2e_cpu_ms_per_job.bus"]["met"] is False
    assert goals["warm_vs_fastest_peer.ratio"]["met"] is True
    assert goals["heavy.ours_ratio.warm.celery"]["met"] is True
    table = stats.render_table(stats.table_rows(results))
    assert "bus CPU per job <= 0.25 ms: MISSED" in table
    assert "warm >= 1.0x the fastest peer on no-op jobs: met" in table
    assert "warm >= Celery prefork on the numpy job: met" in table
    assert stats.warm_vs_fastest_peer({"e2e_warm_jobs_per_s": 1.0}) is None
