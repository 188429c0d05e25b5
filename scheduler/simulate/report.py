"""A simulation's outcome as rich tables or as JSON, alone or several side by side."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from scheduler.simulate.compiled import in_use
from scheduler.simulate.world import Outcome

FINALS = ("succeeded", "failed", "timed_out", "dead", "cancelled", "expired", "skipped")
"""The final states counted in the summary, in the order shown."""


REQUEST_COUNTS = ("fired", "firings_skipped", "firings_refused", "cancels")
"""The counts of a workload's schedules and cancels, shown when not zero: firings
submitted, firings not run (skipped or missed, as ``skipped`` events), firings the core
refused, cancel requests."""


def summary(outcome: Outcome) -> dict[str, Any]:
    """The figures of ``outcome`` as plain JSON-ready values (seconds, counts, ratios)."""
    counts = outcome.counts
    return {
        "jobs": outcome.jobs,
        "finals": {state: counts.get(state, 0) for state in FINALS if counts.get(state)},
        "unfinished": outcome.unfinished,
        "makespan_s": outcome.makespan,
        "evictions": counts.get("evicted", 0),
        "steals": outcome.steals,
        "steal_attempts": outcome.steal_attempts,
        "timeouts": outcome.timeouts,
        "retries": counts.get("retrying", 0),
        "requeued": counts.get("requeued", 0),
        **{name: counts[name] for name in REQUEST_COUNTS if counts.get(name)},
        "waits_s": [asdict(w) for w in outcome.waits],
        "schedulers": [asdict(n) for n in outcome.nodes],
        "simulation": {
            "events": outcome.events,
            "seconds": outcome.seconds,
            "cpu_seconds": outcome.cpu_seconds,
            "jobs_per_s": outcome.jobs_per_s,
            "jobs_per_cpu_s": outcome.jobs_per_cpu_s,
            "core": in_use(),
        },
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def waits_table(outcome: Outcome, title: str = "Wait for a slot, by priority (ms)") -> Table:
    """Per priority: started attempts and their wait percentiles, in milliseconds."""
    table = Table(title=title)
    for column in ("priority", "started", "p50", "p90", "p99", "max", "mean"):
        table.add_column(column, justify="right")
    for w in outcome.waits:
        table.add_row(
            str(w.priority),
            f"{w.count:,}",
            _ms(w.p50),
            _ms(w.p90),
            _ms(w.p99),
            _ms(w.max),
            _ms(w.mean),
        )
    return table


def totals_rows(outcome: Outcome) -> list[tuple[str, str]]:
    """The run's totals as (name, value) rows."""
    s = summary(outcome)
    rows = [("jobs", f"{s['jobs']:,}")]
    rows += [(state, f"{n:,}") for state, n in s["finals"].items()]
    rows += [
        ("unfinished", f"{s['unfinished']:,}"),
        ("makespan", f"{s['makespan_s']:,.3f} s"),
        ("evictions", f"{s['evictions']:,}"),
        ("steals", f"{s['steals']:,} of {s['steal_attempts']:,} tried"),
        ("timeouts", f"{s['timeouts']:,}"),
        ("retries", f"{s['retries']:,}"),
        ("requeued", f"{s['requeued']:,}"),
        *((name.replace("_", " "), f"{s[name]:,}") for name in REQUEST_COUNTS if name in s),
        ("utilisation", f"{mean_utilisation(outcome):.1%}"),
        ("simulated", f"{outcome.events:,} events in {outcome.seconds:.2f} s"),
        ("speed", f"{outcome.jobs_per_s:,.0f} jobs/s ({outcome.jobs_per_cpu_s:,.0f} per CPU s)"),
        ("core", in_use()),
    ]
    return rows


def mean_utilisation(outcome: Outcome) -> float:
    """Busy slot-seconds over all slot-seconds of the makespan, fleet-wide."""
    slots = sum(n.size for n in outcome.nodes)
    if not slots or outcome.makespan <= 0:
        return 0.0
    return sum(n.busy_s for n in outcome.nodes) / (slots * outcome.makespan)


def nodes_table(outcome: Outcome, limit: int = 30) -> Table:
    """Per scheduler: size, attempts started, busy seconds and utilisation (the first
    ``limit`` schedulers)."""
    table = Table(title="Schedulers")
    for column in ("name", "size", "started", "busy s", "utilisation"):
        table.add_column(column, justify="right")
    for n in outcome.nodes[:limit]:
        table.add_row(
            n.name, str(n.size), f"{n.started:,}", f"{n.busy_s:,.1f}", f"{n.utilisation:.1%}"
        )
    if len(outcome.nodes) > limit:
        table.caption = f"and {len(outcome.nodes) - limit} more (--json lists every one)"
    return table


def show(console: Console, outcome: Outcome) -> None:
    """Print the totals, the waits by priority and the schedulers."""
    totals = Table(title="Simulated run", show_header=False)
    totals.add_column(justify="left")
    totals.add_column(justify="right")
    for name, value in totals_rows(outcome):
        totals.add_row(name, value)
    console.print(totals)
    console.print(waits_table(outcome))
    console.print(nodes_table(outcome))


def show_compare(console: Console, names: Sequence[str], outcomes: Sequence[Outcome]) -> None:
    """Print the variants side by side: their totals, then the wait percentiles of each
    priority."""
    table = Table(title="Variants on the same workload")
    table.add_column("")
    for name in names:
        table.add_column(name or "(base)", justify="right")
    rows = [totals_rows(o) for o in outcomes]
    labels = [label for label, _ in rows[0]]
    for label in labels:
        cells = [dict(r).get(label, "0") for r in rows]
        table.add_row(label, *cells)
    priorities = sorted({w.priority for o in outcomes for w in o.waits})
    for p in priorities:
        for field in ("p50", "p99", "max"):
            cells = []
            for o in outcomes:
                w = next((w for w in o.waits if w.priority == p), None)
                cells.append("-" if w is None else _ms(getattr(w, field)))
            table.add_row(f"wait p{p} {field} ms", *cells)
    console.print(table)
