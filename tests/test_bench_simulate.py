"""The bench's simulator figure: its command runs and gives the figure's fields."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import simulate  # noqa: E402
from bench.run import FIGURES, HOW, selected  # noqa: E402
from bench.stats import table_rows  # noqa: E402


async def test_the_simulate_figure_runs_and_has_a_row_and_how() -> None:
    results = await simulate.simulated_jobs_per_s(300)
    figure = results["simulated_jobs_per_s"]
    assert figure["jobs"] == 300 and figure["schedulers"] == simulate.SIM_SCHEDULERS
    assert figure["jobs_per_s"] > 0 and figure["jobs_per_cpu_s"] > 0
    assert figure["core"] == "compiled"
    assert [row[0] for row in table_rows(results)] == ["simulated_jobs_per_s"]
    assert "simulated_jobs_per_s" in HOW
    assert selected("simulate", skip_peers=True) == ["simulate"] and "simulate" in FIGURES


async def test_the_million_figure_runs_and_has_a_row_a_how_and_a_goal() -> None:
    results = await simulate.simulated_million(300)
    figure = results["simulated_million"]
    assert figure["jobs"] == 300 and figure["core"] == "compiled"
    assert figure["wall_s_at_1m"] >= figure["wall_s"]
    assert [row[0] for row in table_rows(results)] == ["simulated_million"]
    assert "1,000,000 simulated jobs < 60 s" in table_rows(results)[0][2]
    assert "simulated_million" in HOW
