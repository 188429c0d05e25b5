"""The store figure's pure parts: its medians and ratio, its table rows, and the bus
command line it builds (``--store`` in place of ``--db``)."""

from __future__ import annotations

import sys

from conftest import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import stats
from bench.run import FIGURES, HOW, selected
from bench.store import figures
from bench.system import _without


def test_the_figures_are_medians_and_postgresql_over_sqlite() -> None:
    runs = {
        "sqlite": [{"jobs_per_s": r} for r in (90.0, 100.0, 300.0)],
        "postgresql": [{"jobs_per_s": r} for r in (50.0, 10.0, 60.0)],
    }
    assert figures(runs, "jobs_per_s") == {
        "sqlite": 100.0,
        "postgresql": 50.0,
        "postgresql_vs_sqlite": 0.5,
    }


def test_the_store_figure_has_a_row_and_how() -> None:
    results = {"store_submits_per_s": {"sqlite": 2000.0, "postgresql": 1500.0}}
    assert "sqlite 2,000, postgresql 1,500" in stats.render_table(stats.table_rows(results))
    assert {"store_submits_per_s", "store_e2e_jobs_per_s"} <= HOW.keys()
    assert "store" in FIGURES and selected("store", skip_peers=True) == ["store"]


def test_a_store_replaces_the_journal_file() -> None:
    argv = ["--db", "/w/db", "--token-file", "/w/t"]
    assert _without(argv, "--db") == ["--token-file", "/w/t"]
