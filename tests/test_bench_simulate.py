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
    assert [row[0] for row in table_rows(results)] == ["simulated_jobs_per_s"]
    assert "simulated_jobs_per_s" in HOW
    assert selected("simulate", skip_peers=True) == ["simulate"] and "simulate" in FIGURES
