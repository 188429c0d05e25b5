"""The simulator's compiled core (:data:`scheduler.compiled.SIMULATOR`): the policy and
the simulator's hot modules built with mypyc from the same source files, which ``python
-m scheduler.simulate`` runs when the build matches the sources.

The simulator calls :func:`use` before it imports any of them: when the build is fresh,
the compiled modules go first on their packages' paths; otherwise (not built, stale, or
``SCHEDBUS_PURE`` set) the run stays interpreted, about 1.5x slower, and :func:`use` says
why. The tests that import the simulator and the live bus and scheduler always run the
interpreted source.
"""

from __future__ import annotations

import importlib
import sys
import sysconfig

import click

from scheduler.compiled import SIMULATOR, activate, module_names, package_root, usable


def use() -> None:
    """Make the compiled modules the ones the next imports load, if the build matches the
    sources and ``SCHEDBUS_PURE`` is not set; otherwise say on stderr why the run is
    interpreted (unless ``SCHEDBUS_PURE`` asked for it)."""
    dest, reason = usable(SIMULATOR)
    loaded = [name for name in module_names(SIMULATOR, package_root()) if name in sys.modules]
    if dest is not None and loaded:
        dest, reason = None, f"{loaded[0]} was imported before the compiled core"
    if dest is None:
        if reason is not None:
            click.echo(
                f"simulate: running the interpreted core, about 1.5x slower: {reason} "
                "(scripts/setup or python -m scheduler.compiled builds it)",
                err=True,
            )
        return
    activate(SIMULATOR, dest)


def in_use() -> str:
    """``"compiled"`` if this process runs the compiled dispatch core, else
    ``"interpreted"``."""
    module = importlib.import_module("scheduler.policy.dispatch.dispatcher")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    return "compiled" if str(module.__file__).endswith(suffix) else "interpreted"
