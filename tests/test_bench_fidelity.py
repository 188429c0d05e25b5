"""The bench's fidelity figure, its pure parts: the stream it runs, and how it compares
live and simulated waits (on a small synthetic recording, no processes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import fidelity  # noqa: E402
from bench.run import FIGURES, HOW, selected  # noqa: E402
from bench.stats import check_goals  # noqa: E402
from scheduler.protocol import JobEvent  # noqa: E402
from scheduler.simulate.metrics import WaitStats  # noqa: E402


def test_the_stream_is_seeded_and_loads_the_slots_as_planned() -> None:
    jobs = fidelity.stream(2000, 0.4, 1.6, 9, 6)
    assert jobs == fidelity.stream(2000, 0.4, 1.6, 9, 6)
    assert {p for _, p, _ in jobs} == set(fidelity.PRIORITIES)
    work = sum(r for _, _, r in jobs)
    assert work / (jobs[-1][0] * 6) == pytest.approx(fidelity.LOAD, rel=0.1)


def waits(priority: int, p50: float, p90: float) -> WaitStats:
    return WaitStats(priority, 10, p50, p90, p90, p90, p50)


def test_the_comparison_takes_the_live_mean_and_the_simulated_median() -> None:
    live = [[waits(0, 0.010, 0.020)], [waits(0, 0.012, 0.020)]]
    runs = [[waits(0, 0.011, 0.018)], [waits(0, 0.020, 0.022)], [waits(0, 0.009, 0.030)]]
    found = fidelity.compare(live, runs)
    p50 = found["by_priority"]["0"]["p50"]
    assert p50 == {
        "live_ms": 11.0, "sim_ms": 11.0, "ratio": 1.0,
        "live_range_ms": [10.0, 12.0], "sim_range_ms": [9.0, 20.0],
    }  # fmt: skip
    assert found["by_priority"]["0"]["p90"]["ratio"] == 1.1
    assert found["worst_off"] == pytest.approx(0.1) and found["within"]
    assert fidelity.live_spread(live) == pytest.approx(0.2)
    assert fidelity.live_spread(live[:1]) is None


def event(kind: str, job: str, at: float, where: str | None = None, p: int = 5) -> JobEvent:
    return JobEvent(kind, job, p, "queued", at, runtime=1.0, scheduler=where)  # type: ignore[arg-type]


def test_the_figure_replays_a_recording_under_each_cost_model(tmp_path: Path) -> None:
    # Two jobs on a one-slot scheduler: b waits for a; each start 20 ms after its assign.
    rounds = [
        [
            event("accepted", "a", 0.0), event("assigned", "a", 0.0, "S"),
            event("accepted", "b", 0.1), event("assigned", "b", 0.1, "S"),
            event("started", "a", 0.02, "S"), event("succeeded", "a", 1.03, "S"),
            event("started", "b", 1.0303, "S"), event("succeeded", "b", 2.04, "S"),
        ]
    ]  # fmt: skip
    found = fidelity.figure(rounds, 1, 1, tmp_path)
    assert (tmp_path / "recorded-1.jsonl").read_text().count("\n") == 8
    assert found["calibration"]["start_cost_s"] == pytest.approx(0.0003)
    assert found["no_costs"]["by_priority"]["5"]["p50"]["sim_ms"] == 1.0
    calibrated = found["calibrated"]["by_priority"]["5"]
    assert calibrated["p50"]["ratio"] == pytest.approx(1.0, abs=0.01)
    assert calibrated["p90"]["ratio"] == pytest.approx(1.0, abs=0.01)
    assert found["worst_off"] == found[fidelity.HEADLINE]["worst_off"]
    assert check_goals({"sim_fidelity": found})["sim_fidelity.worst_off"]["met"] is not None
    assert "sim_fidelity" in HOW and selected("fidelity", skip_peers=True) == ["fidelity"]
    assert "fidelity" in FIGURES
    # The saved rounds give the figure again (pooled from several bench runs).
    again = CliRunner().invoke(fidelity.main, [str(tmp_path / "recorded-1.jsonl")] * 2)
    assert again.exit_code == 0, again.output
    pooled = json.loads(again.stdout)
    assert pooled["rounds"] == 2 and pooled["live_spread"] == 0.0
    shown = fidelity.lines(pooled)
    assert shown[0].startswith("no_costs: worst off") and "priority 5: p50 live" in shown[1]
    assert "\n".join(shown) in again.stderr
