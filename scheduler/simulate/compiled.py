"""The simulator's compiled core (:data:`scheduler.compiled.SIMULATOR`): the policy and
the simulator's hot modules built with mypyc from the same source files, which ``python
-m scheduler.simulate`` runs when the build matches the sources.

The simulator calls :func:`use` before it imports any of them: when the build is fresh,
the compiled modules go first on their packages' paths; otherwise (not built, stale, or
``SCHEDBUS_PURE`` set) the run stays interpreted, about 1.5x slower, and :func:`use` says
why. The bus runs the same build (:mod:`scheduler.bus.__main__`); the tests that import
the simulator, the bus or the scheduler in their own process run the interpreted source.
"""

from __future__ import annotations

import click

from scheduler import compiled
from scheduler.compiled import DISPATCH_CORE, SIMULATOR


def use() -> None:
    """Make the compiled modules the ones the next imports load, if the build matches the
    sources and ``SCHEDBUS_PURE`` is not set; otherwise say on stderr why the run is
    interpreted (unless ``SCHEDBUS_PURE`` asked for it)."""
    reason = compiled.use(SIMULATOR)
    if reason is not None:
        click.echo(
            f"simulate: running the interpreted core, about 1.5x slower: {reason} "
            "(scripts/setup or python -m scheduler.compiled builds it)",
            err=True,
        )


def in_use() -> str:
    """``"compiled"`` if this process runs the compiled dispatch core, else
    ``"interpreted"``."""
    return "compiled" if compiled.runs_compiled(DISPATCH_CORE) else "interpreted"
