"""The simulator's compiled core: the policy and the simulator's hot modules built with
mypyc from the same source files, which ``python -m scheduler.simulate`` runs when the
build matches the sources.

``python -m scheduler.simulate.compiled`` builds them (``scripts/setup`` runs it) into
:func:`build_dir`, and returns at once when the build there is fresh. The simulator calls
:func:`use` before it imports any of them: when the build's fingerprint matches the
source files, the compiled modules go first on their packages' paths; otherwise (not
built, stale, or ``SCHEDBUS_PURE`` set) the run stays interpreted, about 1.5x slower, and
:func:`use` says why. A process either runs all of them compiled or none: a compiled
module only takes the compiled classes of another. The tests that import the simulator
and the live bus and scheduler always run the interpreted source.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import cast

import click

import scheduler

PACKAGES = ("scheduler.policy", "scheduler.policy.dispatch", "scheduler.simulate",
            "scheduler.producer")  # fmt: skip
"""The packages whose modules may be compiled (their ``__init__`` modules never are)."""

_SIMULATOR = ("engine", "node", "metrics", "fleet", "entries", "periodic", "costs", "world",
              "workload")  # fmt: skip
_FINGERPRINT = "fingerprint"


def package_root() -> Path:
    """The directory holding the ``scheduler`` package."""
    return Path(scheduler.__file__).resolve().parent.parent


def build_dir() -> Path:
    """Where the compiled modules live: ``SCHEDBUS_COMPILED_DIR``, else
    ``schedbus-compiled`` in the running Python's prefix (the virtualenv)."""
    return Path(os.environ.get("SCHEDBUS_COMPILED_DIR") or Path(sys.prefix) / "schedbus-compiled")


def sources(root: Path) -> list[Path]:
    """The compiled modules' source files, relative to ``root`` (see :func:`package_root`):
    every module of ``scheduler/policy``, the simulator's loop, nodes, metrics, fleet and
    workload modules, and the producer's workload generator."""
    policy = sorted(
        path.relative_to(root)
        for path in (root / "scheduler" / "policy").rglob("*.py")
        if path.name != "__init__.py"
    )
    simulate = [Path("scheduler", "simulate", f"{name}.py") for name in _SIMULATOR]
    return [*policy, *simulate, Path("scheduler", "producer", "workload.py")]


def module_names(root: Path) -> list[str]:
    """The dotted names of the compiled modules."""
    return [".".join(path.with_suffix("").parts) for path in sources(root)]


def fingerprint(root: Path) -> str:
    """A digest of the compiled modules' sources and of the interpreter's ABI: a build
    whose fingerprint differs from this one does not match the source any more."""
    digest = hashlib.sha256()
    digest.update(f"{sys.version} {sysconfig.get_config_var('EXT_SUFFIX')}\n".encode())
    for path in sources(root):
        digest.update(f"{path.as_posix()}\n".encode())
        digest.update(hashlib.sha256((root / path).read_bytes()).digest())
    return digest.hexdigest()


def why_not(dest: Path, root: Path) -> str | None:
    """Why the build in ``dest`` cannot be used for the sources in ``root``; None if it
    can."""
    try:
        built = (dest / _FINGERPRINT).read_text().strip()
    except FileNotFoundError:
        return f"no compiled core in {dest}"
    if built != fingerprint(root):
        return f"the compiled core in {dest} was built from other sources"
    return None


def use() -> None:
    """Make the compiled modules the ones the next imports load, if the build in
    :func:`build_dir` matches the sources and ``SCHEDBUS_PURE`` is not set; otherwise say
    on stderr why the run is interpreted (unless ``SCHEDBUS_PURE`` asked for it)."""
    if os.environ.get("SCHEDBUS_PURE"):
        return
    root, dest = package_root(), build_dir()
    reason = why_not(dest, root)
    loaded = [name for name in module_names(root) if name in sys.modules]
    if reason is None and loaded:
        reason = f"{loaded[0]} was imported before the compiled core"
    if reason is not None:
        click.echo(
            f"simulate: running the interpreted core, about 1.5x slower: {reason} "
            "(scripts/setup or python -m scheduler.simulate.compiled builds it)",
            err=True,
        )
        return
    sys.path.append(str(dest))  # mypyc's shared runtime module lives at the top
    for package in PACKAGES:
        module = importlib.import_module(package)
        module.__path__.insert(0, str(dest.joinpath(*package.split("."))))


def in_use() -> str:
    """``"compiled"`` if this process runs the compiled dispatch core, else
    ``"interpreted"``."""
    module = importlib.import_module("scheduler.policy.dispatch.dispatcher")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    return "compiled" if str(module.__file__).endswith(suffix) else "interpreted"


def build(dest: Path, jobs: int) -> None:
    """Compile the modules of :func:`sources` with mypyc into ``dest``, replacing what is
    there only once the whole build succeeded; ``jobs`` C compilers run at once."""
    from mypyc.build import mypycify  # build tools: only needed here
    from setuptools import Extension, setup

    root = package_root()
    with tempfile.TemporaryDirectory(prefix="schedbus-mypyc-") as tmp:
        work, out = Path(tmp, "src"), Path(tmp, "out")
        # mypy reads the whole package, not only the compiled modules; the copy keeps
        # setuptools away from the checkout's pyproject.toml and pins what is compiled.
        shutil.copytree(root / "scheduler", work / "scheduler",
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))  # fmt: skip
        here = Path.cwd()
        os.chdir(work)
        try:
            extensions = mypycify(
                [path.as_posix() for path in sources(work)], opt_level="3", multi_file=True
            )
            setup(
                name="schedbus-compiled",
                # mypycify's list is typed as either setuptools' or distutils' Extension
                ext_modules=cast("list[Extension]", extensions),
                script_args=["--quiet", "build_ext", "--build-lib", str(out), "-j", str(jobs)],
            )
        finally:
            os.chdir(here)
        (out / _FINGERPRINT).write_text(fingerprint(work) + "\n")
        staged = dest.with_name(dest.name + ".new")
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(out, staged)
        shutil.rmtree(dest, ignore_errors=True)
        staged.rename(dest)


@click.command()
@click.option("--force", is_flag=True, help="Build even if the build there is fresh.")
@click.option("--check", is_flag=True,
              help="Build nothing: exit 0 if the build matches the sources, else 1.")  # fmt: skip
def cli(force: bool, check: bool) -> None:
    """Build the simulator's compiled core (mypyc and a C compiler) into the virtualenv,
    or SCHEDBUS_COMPILED_DIR; quick when the build there matches the sources."""
    dest = build_dir()
    reason = why_not(dest, package_root())
    if check:
        click.echo(f"compiled core: {reason or f'{dest} matches the sources'}", err=True)
        raise SystemExit(0 if reason is None else 1)
    if reason is None and not force:
        click.echo(f"compiled core: {dest} matches the sources", err=True)
        return
    click.echo(f"compiled core: building into {dest} with mypyc (about a minute)", err=True)
    build(dest, os.cpu_count() or 1)
    click.echo(f"compiled core: built into {dest}", err=True)


if __name__ == "__main__":
    cli()
