"""The ``heavy`` figure: a realistic job (numpy imported, about 5 ms of CPU) through our
scheduler, in each way of starting jobs it is asked to compare, beside the peers.

Our side is ``python -m scheduler.worker --tasks bench.heavy_task`` plus each variant's
options (:data:`VARIANTS`, or ``--ours-variant`` on the command line). The job is
:mod:`bench.heavy_work`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import psutil

from bench import ours
from bench.stats import Json, number
from scheduler.protocol import JobPayload

DESCRIPTION = (
    "import numpy; 6 rounds of sort(sqrt(a*a + 1)) over 20,000 floats "
    "(about 5 ms of CPU on the bench machine)"
)
TASK_MODULE = "bench.heavy_task"
PAYLOAD = JobPayload(priority=5, task="heavy")

Variant = tuple[str, tuple[str, ...]]

VARIANTS: tuple[Variant, ...] = (
    ("fork_server", ()),
    ("no_fork_server", ("--no-fork-server",)),
    ("warm", ("--warm", "1000")),
)
"""Our ways of running the job: (name, extra ``scheduler.worker`` options): a fork per job
from the fork server (the default), from the scheduler itself, and warm slot processes."""


def parse_variant(text: str) -> Variant:
    """``NAME=OPTIONS`` (``warm=--warm 100``) -> (name, options split on spaces).

    Raises ValueError naming the rule when the name is missing or not a word.
    """
    name, _, options = text.partition("=")
    name = name.strip()
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"variant {text!r}: NAME=OPTIONS needs a NAME of letters, digits, _ or -")
    return name, tuple(options.split())


def best_rate(results: Mapping[str, Json]) -> float | None:
    """The highest ``jobs_per_s`` among our variants' results, None if none ran."""
    rates = [number(r.get("jobs_per_s")) for r in results.values()]
    found = [r for r in rates if r is not None]
    return max(found) if found else None


def ratios(ours_results: Mapping[str, Json], peers: Mapping[str, Json]) -> Json:
    """``{variant: {peer: ours / theirs}}`` for every variant and peer that both ran."""
    table: Json = {}
    for name, mine in ours_results.items():
        rate = number(mine.get("jobs_per_s"))
        row: Json = {}
        for peer, theirs in peers.items():
            other = number(theirs.get("jobs_per_s")) if isinstance(theirs, Mapping) else None
            if rate is not None and other:
                row[peer] = round(rate / other, 2)
        table[name] = row
    return table


async def e2e(url: str, jobs: int, bus: psutil.Process, scheduler: psutil.Process) -> Json:
    """``jobs`` heavy jobs through the bus and scheduler (after a warm-up), as the no-op
    e2e round times them."""
    await ours.e2e_round(url, 20, bus, scheduler, 60, PAYLOAD)
    return await ours.e2e_round(url, jobs, bus, scheduler, 60 + jobs / 10, PAYLOAD)


def extra_options(variants: Sequence[Variant]) -> list[str]:
    """The options of every variant, for ``how``."""
    return [f"{name}: {' '.join(options) or '(defaults)'}" for name, options in variants]
