"""``--plot``: the queue and the slots over time, and the waits by priority, as one PNG.

matplotlib is optional (``pip install 'schedbus[plot]'``): it is imported only here,
only when a plot is asked for.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import click

from scheduler.simulate.world import Outcome


def require_matplotlib() -> None:
    """Raise a :class:`click.ClickException` saying how to install matplotlib if it is
    missing (checked before the runs, so that nobody waits for a plot that fails)."""
    if importlib.util.find_spec("matplotlib") is None:
        raise click.ClickException(
            "--plot needs matplotlib, which is not installed: pip install 'schedbus[plot]'"
        )


def draw(path: Path, outcomes: Sequence[Outcome], names: Sequence[str]) -> None:
    """Draw each run of ``outcomes`` (labelled by ``names``) into the PNG ``path``: jobs
    waiting and slots busy over time, then the wait percentiles by priority."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (queue, slots, waits) = pyplot.subplots(3, 1, figsize=(9, 10))
    for name, outcome in zip(names, outcomes, strict=True):
        label = name or "base"
        samples = outcome.samples
        if samples is not None:
            queue.plot(samples.times, samples.waiting, label=label)
            busy = [b / s if s else 0.0 for b, s in zip(samples.busy, samples.slots, strict=True)]
            slots.plot(samples.times, [100 * b for b in busy], label=label)
        priorities = [w.priority for w in outcome.waits]
        for field, style in (("p50", "-o"), ("p99", "--^")):
            values = [max(getattr(w, field) * 1000, 1e-3) for w in outcome.waits]
            waits.plot(priorities, values, style, label=f"{label} {field}")
    queue.set(title="Jobs waiting (not running)", xlabel="simulated s", ylabel="jobs")
    slots.set(title="Slots busy", xlabel="simulated s", ylabel="% of live slots", ylim=(0, 105))
    waits.set(
        title="Wait for a slot by priority (0 most urgent)",
        xlabel="priority",
        ylabel="ms (log)",
        yscale="log",
    )
    for axes in (queue, slots, waits):
        axes.legend(loc="best", fontsize="small")
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
