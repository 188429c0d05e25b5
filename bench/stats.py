"""Pure helpers: percentiles, rates, goals and the printed table. No I/O, no clock."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linearly interpolated (numpy's default).

    Raises ValueError for an empty sequence or ``q`` outside 0..100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, not {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float], digits: int = 3) -> Json:
    """``{p50, p99, min, max, mean, n}`` of ``values``, rounded to ``digits`` decimals."""
    return {
        "p50": round(percentile(values, 50), digits),
        "p99": round(percentile(values, 99), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "mean": round(sum(values) / len(values), digits),
        "n": len(values),
    }


def rate(count: int, seconds: float) -> float:
    """``count / seconds`` rounded to 1 decimal; raises ValueError for ``seconds <= 0``."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, not {seconds}")
    return round(count / seconds, 1)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """``ours / theirs`` to 2 decimals, or None when either is missing or ``theirs`` is 0."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return round(ours / theirs, 2)


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (ValueError when empty)."""
    return percentile(values, 50)


def cautious_ratio(ours: Sequence[float], theirs: Sequence[float]) -> Json:
    """Two estimates of ``ours / theirs`` from rounds run in pairs (``ours[i]`` right after
    ``theirs[i]``), and the lower of them, each to 2 decimals: ``paired``, the median of the
    pairs' ratios (holds up when the machine's load drifts slowly), and ``best``, the best
    round of ours over the best of theirs (holds up when one round of either side is
    slowed alone, which can swing a pair's ratio either way). ``ratio`` is the lower: a
    goal judged on it is met only when both say so. ValueError on no rounds or unequal
    counts."""
    if not ours or len(ours) != len(theirs):
        raise ValueError(f"rounds: {len(ours)} of ours, {len(theirs)} of theirs; need equal, >= 1")
    paired = median([a / b for a, b in zip(ours, theirs, strict=True)])
    best = max(ours) / max(theirs)
    lower = min(paired, best)
    return {"ratio": round(lower, 2), "paired": round(paired, 2), "best": round(best, 2)}


def number(value: object) -> float | None:
    """``value`` if it is a real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True)
class Goal:
    """A target for one figure: ``key`` (dotted path into the results) compared by ``op``."""

    key: str
    op: str
    target: float
    text: str

    def check(self, results: Mapping[str, Any]) -> bool | None:
        """True or False when the figure is there, None when it was not measured."""
        value = number(lookup(results, self.key))
        if value is None:
            return None
        compare: Callable[[float, float], bool] = _OPS[self.op]
        return compare(value, self.target)


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
}

GOALS: tuple[Goal, ...] = (
    Goal("e2e_vs_raw_ratio", ">=", 0.7, "e2e >= 0.7x the raw fork loop"),
    Goal("e2e_cpu_ms_per_job.bus", "<=", 0.25, "bus CPU per job <= 0.25 ms"),
    Goal("peers.rq.ours_ratio", ">=", 3.0, ">= 3x RQ"),
    Goal(
        "warm_vs_fastest_peer.ratio",
        ">=",
        1.0,
        "warm >= 1.0x the fastest peer on no-op jobs",
    ),
    Goal("heavy.ours_ratio.warm.celery", ">=", 1.0, "warm >= Celery prefork on the numpy job"),
    Goal("submit_to_start_ms.p50", "<=", 2.0, "submit->start p50 <= 2 ms"),
    Goal("eviction_ms.p50", "<=", 10.0, "eviction p50 <= 10 ms"),
    Goal("timeout_overrun_ms.p99", "<=", 20.0, "timeout overrun p99 <= 20 ms"),
    Goal("ingest_jobs_per_s", ">=", 15_000.0, "ingest >= 15,000 jobs/s"),
    Goal("cluster_makespan.ratio", "<=", 1.1, "cluster makespan <= 1.1x ideal"),
    Goal("cluster_eviction_ms.p50", "<=", 10.0, "cluster eviction p50 <= 10 ms"),
    Goal("delayed_start_lateness_ms.p50", "<=", 5.0, "delayed start lateness p50 <= 5 ms"),
    Goal("delayed_start_lateness_ms.p99", "<=", 20.0, "delayed start lateness p99 <= 20 ms"),
    Goal("periodic_fire_lateness_ms.p50", "<=", 5.0, "periodic lateness p50 <= 5 ms"),
    Goal("periodic_fire_lateness_ms.p99", "<=", 20.0, "periodic lateness p99 <= 20 ms"),
    Goal(
        "fleet_dispatch.cpu_ratio_largest_vs_1",
        "<=",
        1.5,
        "bus CPU/job, 1,000 vs 1 scheduler <= 1.5x",
    ),
    Goal("queued_jobs.rss_mb_at_1m", "<=", 600.0, "RSS at 1M queued jobs < 600 MB"),
    Goal("queued_jobs.reload_s_at_1m", "<=", 10.0, "reload of 1M queued jobs < 10 s"),
    Goal("cluster10_makespan.ratio", "<=", 1.1, "10-scheduler makespan <= 1.1x ideal"),
    Goal("failover_s.p50", "<=", 3.0, "failover p50 < 3 s"),
    Goal("sim_fidelity.worst_off", "<=", 0.1, "simulated waits within 10% of live"),
    Goal("simulated_million.wall_s_at_1m", "<=", 60.0, "1,000,000 simulated jobs < 60 s"),
)


def lookup(results: Mapping[str, Any], dotted: str) -> object:
    """``results["a"]["b"]`` for ``"a.b"``; None when any part is missing."""
    node: object = results
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def warm_vs_fastest_peer(results: Mapping[str, Any]) -> Json | None:
    """Warm mode's no-op jobs/s over the fastest peer's of the same run, and that peer's
    rate (``{"ratio", "<peer>_jobs_per_s"}``); None unless both were measured."""
    warm = number(results.get("e2e_warm_jobs_per_s"))
    peers = results.get("peers")
    if warm is None or not isinstance(peers, Mapping):
        return None
    rates = {
        name: rate
        for name, peer in peers.items()
        if isinstance(peer, Mapping) and (rate := number(peer.get("jobs_per_s")))
    }
    if not rates:
        return None
    fastest = max(rates, key=lambda name: rates[name])
    return {"ratio": round(warm / rates[fastest], 2), f"{fastest}_jobs_per_s": rates[fastest]}


def check_goals(results: Mapping[str, Any]) -> Json:
    """``{key: {"goal", "value", "met"}}`` for every goal (``met`` None: not measured)."""
    return {
        goal.key: {
            "goal": goal.text,
            "value": lookup(results, goal.key),
            "met": goal.check(results),
        }
        for goal in GOALS
    }


def fmt(value: object) -> str:
    """A short display of one figure: numbers with sensible digits, p50/p99 pairs, skips."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int | float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, Mapping):
        return _fmt_mapping(value)
    return str(value)


def _fmt_mapping(value: Mapping[str, Any]) -> str:
    if "skipped" in value:
        return _clip(f"skipped: {value['skipped']}")
    if "error" in value:
        return _clip(f"error: {value['error']}")
    if "p50" in value and "p99" in value:
        return f"p50 {fmt(value['p50'])} / p99 {fmt(value['p99'])}"
    if "jobs_per_s" in value:
        return f"{fmt(value['jobs_per_s'])} jobs/s"
    if "makespan_s" in value:
        return (
            f"{fmt(value['makespan_s'])} s vs ideal {fmt(value.get('ideal_s'))} s "
            f"({fmt(value.get('ratio'))}x), {value.get('jobs')} jobs, {value.get('steals')} steals"
        )
    if "points" in value:
        return _fmt_curve(value)
    if "rss_mb_at_1m" in value:
        return (
            f"{value.get('jobs'):,} jobs: RSS {fmt(value.get('rss_queued_mb'))} MB, "
            f"{fmt(value.get('bytes_per_job'))} B/job, ready after restart in "
            f"{fmt(value.get('restart_to_stats_s'))} s"
        )
    if "dispatch_jobs_per_s" in value:
        return (
            f"{fmt(value['dispatch_jobs_per_s'])} jobs/s, bus "
            f"{fmt(value.get('bus_cpu_us_per_job'))} us CPU/job"
        )
    parts = [f"{key} {fmt(item)}" for key, item in value.items() if number(item) is not None]
    return ", ".join(parts) if parts else _clip(str(dict(value)))


def _fmt_curve(value: Mapping[str, Any]) -> str:
    points = value.get("points") or []
    cells = [f"{p.get('schedulers')}: {fmt(p.get('bus_cpu_us_per_job'))}" for p in points]
    ratio = fmt(value.get("cpu_ratio_largest_vs_1"))
    return f"bus us CPU/job by schedulers {', '.join(cells)} ({ratio}x)"


def _clip(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def table_rows(results: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, goal) rows for the printed table, in the order of the figures."""
    rows: list[tuple[str, str, str]] = []
    for key in FIGURE_KEYS:
        if key not in results:
            continue
        if key == "peers":
            rows.extend(_peer_rows(results))
            continue
        if key == "heavy":
            rows.extend(_heavy_rows(results[key]))
            continue
        goal = next((g for g in GOALS if g.key.split(".")[0] == key), None)
        rows.append((key, fmt(results[key]), _goal_cell(goal, results)))
    return rows


def _goal_cell(goal: Goal | None, results: Mapping[str, Any]) -> str:
    if goal is None:
        return ""
    met = goal.check(results)
    mark = {True: "met", False: "MISSED", None: "n/a"}[met]
    return f"{goal.text}: {mark}"


def _peer_rows(results: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    peers = results.get("peers")
    if not isinstance(peers, Mapping):
        return [("peers", fmt(peers), "")]
    rows: list[tuple[str, str, str]] = []
    for name, peer in peers.items():
        value = fmt(peer)
        if isinstance(peer, Mapping) and peer.get("ours_ratio") is not None:
            value += f" (ours {peer['ours_ratio']}x)"
        goal = next((g for g in GOALS if g.key == f"peers.{name}.ours_ratio"), None)
        rows.append((f"peers.{name}", value, _goal_cell(goal, results)))
    return rows


def _heavy_rows(heavy: object) -> list[tuple[str, str, str]]:
    if not isinstance(heavy, Mapping) or "ours" not in heavy:
        return [("heavy", fmt(heavy), "")]
    goal = next(g for g in GOALS if g.key.startswith("heavy."))
    rows = [
        (
            f"heavy.ours.{name}",
            fmt(found),
            _goal_cell(goal, {"heavy": heavy}) if name == "warm" else "",
        )
        for name, found in heavy["ours"].items()
    ]
    peers = heavy.get("peers")
    if isinstance(peers, Mapping) and "skipped" not in peers:
        rows += [(f"heavy.peers.{name}", fmt(found), "") for name, found in peers.items()]
    else:
        rows.append(("heavy.peers", fmt(peers), ""))
    return rows


FIGURE_KEYS: tuple[str, ...] = (
    "e2e_jobs_per_s",
    "raw_fork_jobs_per_s",
    "e2e_vs_raw_ratio",
    "e2e_vs_raw_estimates",
    "e2e_cpu_ms_per_job",
    "e2e_warm_jobs_per_s",
    "e2e_warm_process_jobs_per_s",
    "e2e_warm_vs_process_ratio",
    "e2e_warm_cpu_ms_per_job",
    "raw_fork_cpu_ms_per_job",
    "peers",
    "warm_vs_fastest_peer",
    "submit_to_accepted_ms",
    "submit_to_start_ms",
    "submit_to_final_ms",
    "eviction_ms",
    "timeout_overrun_ms",
    "timeout_final_after_deadline_ms",
    "ingest_jobs_per_s",
    "ingest_bulk_jobs_per_s",
    "bus_bytes_per_queued_job",
    "fanout",
    "cluster_makespan",
    "cluster_eviction_ms",
    "delayed_start_lateness_ms",
    "periodic_fire_lateness_ms",
    "bus_scheduled_jobs",
    "fleet_dispatch",
    "queued_jobs",
    "ingest_many_producers",
    "cluster10_makespan",
    "heavy",
    "simulated_jobs_per_s",
    "simulated_million",
    "store_submits_per_s",
    "store_e2e_jobs_per_s",
    "failover_s",
    "sim_fidelity",
)
"""The figures, in the order they are printed."""


def render_table(rows: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table with a header; columns padded to their widest cell."""
    header = ("figure", "value", "goal")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(3)]
    lines = [
        " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in (header, *rows)
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(rows: Sequence[tuple[str, str, str]]) -> str:
    """The same rows as a Markdown table (for the README)."""
    lines = ["| figure | value | goal |", "|---|---|---|"]
    lines += [f"| `{name}` | {value} | {goal} |" for name, value, goal in rows]
    return "\n".join(lines)
