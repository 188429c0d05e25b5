"""Our task for the ``heavy`` figure: ``python -m scheduler.worker --tasks bench.heavy_task``."""

from __future__ import annotations

from bench.heavy_work import work
from scheduler.tasks import task


@task(name="heavy")
def heavy() -> None:
    """Run :func:`bench.heavy_work.work` (its result is not sent back, as the peers')."""
    work()
