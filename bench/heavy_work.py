"""The realistic job of the ``heavy`` figure: numpy imported, about 5 ms of CPU.

Used by our task module (:mod:`bench.heavy_task`) and by every peer's worker, so each
system runs the same code. numpy is imported when this module is, as a task module
would: a worker that imports its tasks before it forks pays for the import once.
Sorting and element-wise work only (no BLAS), so numpy uses one thread.
"""

from __future__ import annotations

import importlib
from typing import Any

# Loosely typed on purpose: numpy is a bench tool, absent from the package's environment
# (and its type checking) unless scripts/bench installed it.
np: Any = importlib.import_module("numpy")

SIZE = 20_000
ROUNDS = 6
DESCRIPTION = (
    f"import numpy; {ROUNDS} rounds of sort(sqrt(a*a + 1)) over {SIZE:,} floats "
    "(about 5 ms of CPU on the bench machine)"
)


def work() -> float:
    """The job: a fixed amount of numpy work from a fixed seed; returns a checksum."""
    values = np.random.default_rng(7).random(SIZE)
    total = 0.0
    for _ in range(ROUNDS):
        values = np.sort(np.sqrt(values * values + 1.0))
        total += float(values.sum())
    return total
