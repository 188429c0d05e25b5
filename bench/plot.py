"""The bench's figures as one PNG, drawn with matplotlib from ``bench-results.json``.

``python -m bench.plot bench-results.json`` (``--out PNG``; default: the JSON's path with
``.png``) redraws it from an existing JSON; ``scripts/bench`` draws it after every run.
Panels: jobs/s of ours and the peers (no-op jobs, and the heavy job), the bus's CPU per
job against the number of connected schedulers, and ingest with one and ten producers.
matplotlib is one of the bench's own requirements (``bench/requirements.txt``), never
the package's; :func:`panels` (what is drawn) needs nothing but the JSON.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from bench.stats import Json, number

PEER_NAMES = ("rq", "arq", "celery", "dramatiq")


@dataclass
class Panels:
    """What the PNG shows; an empty panel is left out."""

    noop: list[tuple[str, float]] = field(default_factory=list)
    heavy: list[tuple[str, float]] = field(default_factory=list)
    fleet: list[tuple[int, float]] = field(default_factory=list)
    ingest: list[tuple[str, float]] = field(default_factory=list)
    title: str = ""


def _rate(node: object) -> float | None:
    return number(node.get("jobs_per_s")) if isinstance(node, Mapping) else None


def _bars(pairs: list[tuple[str, object]]) -> list[tuple[str, float]]:
    return [(name, value) for name, raw in pairs if (value := number(raw)) is not None]


def _peer_rates(peers: object) -> list[tuple[str, object]]:
    if not isinstance(peers, Mapping):
        return []
    return [(name, _rate(peers.get(name))) for name in PEER_NAMES]


def panels(report: Mapping[str, Any]) -> Panels:
    """The series of every panel from a bench report (figures that did not run, failed
    or were skipped are simply absent)."""
    found = Panels()
    found.noop = _bars(
        [
            ("ours", report.get("e2e_jobs_per_s")),
            ("ours warm", report.get("e2e_warm_jobs_per_s")),
            ("raw fork", report.get("raw_fork_jobs_per_s")),
            *_peer_rates(report.get("peers")),
        ]
    )
    heavy = report.get("heavy")
    if isinstance(heavy, Mapping):
        mine = heavy.get("ours")
        ours = (
            [(f"ours {k}", _rate(v)) for k, v in mine.items()] if isinstance(mine, Mapping) else []
        )
        found.heavy = _bars([*ours, *_peer_rates(heavy.get("peers"))])
    fleet = report.get("fleet_dispatch")
    points = fleet.get("points") if isinstance(fleet, Mapping) else None
    for point in points if isinstance(points, list) else []:
        cpu = number(point.get("bus_cpu_us_per_job"))
        if cpu is not None:
            found.fleet.append((int(point["schedulers"]), cpu))
    many = report.get("ingest_many_producers")
    found.ingest = _bars(
        [
            ("1 producer", report.get("ingest_jobs_per_s")),
            ("1 producer, bulk", report.get("ingest_bulk_jobs_per_s")),
            ("10 producers", many.get("jobs_per_s") if isinstance(many, Mapping) else None),
            ("10, bulk", many.get("bulk_jobs_per_s") if isinstance(many, Mapping) else None),
        ]
    )
    code = report.get("machine", {}).get("code", {}) if isinstance(report, Mapping) else {}
    found.title = f"schedbus bench, {report.get('started_at', '?')}, commit {code.get('commit')}"
    return found


def draw(found: Panels, out: Path) -> None:
    """Write the non-empty panels of ``found`` to ``out`` (PNG). Raises ImportError if
    matplotlib is not installed."""
    # Loosely typed on purpose: matplotlib is not in the package's environment by default.
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    bars = [
        ("no-op jobs: jobs/s", found.noop),
        ("numpy job, ~5 ms CPU: jobs/s", found.heavy),
        ("ingest: jobs/s accepted", found.ingest),
    ]
    shown = [(title, data) for title, data in bars if data]
    count = max(len(shown) + bool(found.fleet), 1)
    cols = min(count, 2)
    rows = (count + 1) // 2
    fig, grid = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[count:]:
        ax.set_visible(False)
    for ax, (title, data) in zip(axes, shown, strict=False):
        names = [name for name, _ in data]
        ax.bar(names, [value for _, value in data], color=_colors(names))
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=30)
    if found.fleet:
        ax = axes[len(shown)]
        ax.plot([n for n, _ in found.fleet], [v for _, v in found.fleet], marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("connected schedulers")
        ax.set_title("bus CPU per dispatched job (us)")
        ax.set_ylim(bottom=0)
    fig.suptitle(found.title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _colors(names: list[str]) -> list[str]:
    return ["tab:blue" if name.startswith("ours") else "tab:gray" for name in names]


def png_for(results: Path) -> Path:
    """Where the PNG of ``results`` goes: beside it, with ``.png``."""
    return results.with_suffix(".png")


def write_png(results: Path, out: Path | None = None) -> Path:
    """Draw the PNG of the JSON at ``results``; return its path."""
    report: Json = json.loads(results.read_text())
    target = out or png_for(results)
    draw(panels(report), target)
    return target


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("results", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the PNG. Default: RESULTS with .png.",
)
def cli(results: Path, out: Path | None) -> None:
    """Draw the PNG of an existing bench-results.json (jobs/s of ours and the peers, and
    the scaling curves)."""
    try:
        click.echo(f"plot written to {write_png(results, out)}")
    except ImportError as exc:
        raise click.ClickException(
            f"matplotlib is needed: {exc} (pip install -r bench/requirements.txt)"
        ) from exc
    except (ValueError, KeyError) as exc:
        raise click.ClickException(f"{results} is not a bench report: {exc}") from exc


if __name__ == "__main__":
    cli()
