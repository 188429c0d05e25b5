"""Where the milliseconds of a job's start go: the hops of ``bench/hops_site``, summed up.

Run a figure with the hop tracer on, then read its logs::

    SCHEDBUS_HOPS_DIR=/tmp/hops PYTHONPATH=$PWD/bench/hops_site:$PWD \\
        .venv/bin/python -m bench.run --quick --only latency --skip-peers
    .venv/bin/python -m bench.hops /tmp/hops --anchor p.submit

Every process's hops are merged in time order and cut into one segment per job at each
``--anchor`` hop (``p.submit``: the producer's submit; ``b.coretimer``: the core's timer,
as a delayed job's release; ``b.schedtimer``: a schedule's firing). Each hop is named by
its tag, the kind of message it carries, and how many of that name came before it in the
segment; the table gives the median time of each from the segment's zero, in ms, with how
many segments had it. The zero is the anchor, or with ``--due`` the job's due time: the
``run_at`` of the producer's submit before the anchor (``--due run_at``), or the latest
multiple of EVERY seconds before the anchor (``--due 0.5``). The tracer costs one
``write`` per hop (a few microseconds each).
"""

from __future__ import annotations

import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import click

_KIND = re.compile(r'"(?:cmd|type)":"(\w+)"(?:.*?"event":"(\w+)")?')

Hop = tuple[int, str, str]
"""A hop: ns since the epoch, its name (tag:kind), its raw detail."""


def _kind(detail: str) -> str:
    match = _KIND.search(detail)
    if match is None:
        return detail[:30]
    return match.group(1) + (f"/{match.group(2)}" if match.group(2) else "")


def read_hops(directory: Path) -> list[Hop]:
    """Every hop of every process in ``directory``, in time order."""
    hops: list[Hop] = []
    for path in directory.glob("hops-*.log"):
        for line in path.read_text().splitlines():
            ns, tag, detail = (line.split(" ", 2) + [""])[:3]
            name = f"{tag}:{_kind(detail)}" if detail and not tag.startswith("p.") else tag
            hops.append((int(ns), name, detail))
    hops.sort()
    return hops


def _zero(anchor_ns: int, due: str | None, run_at: float | None) -> float:
    if due is None:
        return anchor_ns / 1e9
    if due == "run_at":
        return run_at if run_at is not None else math.nan
    every = float(due)
    return math.floor(anchor_ns / 1e9 / every) * every


def segments(hops: list[Hop], anchor: str, due: str | None) -> list[list[tuple[float, str]]]:
    """The hops cut at each ``anchor``: per segment, (ms after its zero, numbered name)."""
    cut: list[list[tuple[float, str]]] = []
    zero = 0.0
    run_at: float | None = None
    seen: dict[str, int] = {}
    for ns, name, detail in hops:
        if name == "p.submit" and detail:
            run_at = float(detail)
        if name.split(":")[0] == anchor:
            cut.append([])
            zero, seen = _zero(ns, due, run_at), {}
        if not cut or "heartbeat" in name:
            continue
        seen[name] = seen.get(name, 0) + 1
        cut[-1].append(((ns / 1e9 - zero) * 1000, f"{name}#{seen[name]}"))
    return cut


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--anchor", default="p.submit", show_default=True, help="The hop a job starts at.")
@click.option("--due", default=None, help="run_at, or EVERY (seconds): time from the due time.")
@click.option("--skip", default=5, show_default=True, help="Segments to leave out at the start.")
def cli(directory: Path, anchor: str, due: str | None, skip: int) -> None:
    """Print the median time of each hop of the jobs traced in DIRECTORY."""
    cut = segments(read_hops(directory), anchor, due)[skip:-1]
    times: dict[str, list[float]] = defaultdict(list)
    for segment in cut:
        for ms, name in segment:
            times[name].append(ms)
    rows = sorted(
        (statistics.median(v), name, len(v)) for name, v in times.items() if len(v) >= len(cut) / 2
    )
    click.echo(
        f"{len(cut)} segments from {anchor}" + (f", times from the due time ({due})" if due else "")
    )
    for median, name, count in rows:
        click.echo(f"{median:9.3f} ms  {name:44s} n={count}")


if __name__ == "__main__":
    cli(sys.argv[1:])
