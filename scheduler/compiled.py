"""Modules built with mypyc from the same source files, used where a build matches them.

Two builds, each in its own directory of :func:`base_dir` with its own fingerprint:

* ``simulator``: the policy and the simulator's hot modules, which ``python -m
  scheduler.simulate`` runs (:mod:`scheduler.simulate.compiled`), and the bus (its
  dispatch core, :mod:`scheduler.bus.__main__`);
* ``forkserver``: the fork server and the job-side modules it runs in every job (the
  fork server's loop, a job's setup, its containment), which each scheduler's fork
  server imports (:mod:`scheduler.worker.forkserver_link`): a compiled function touches
  fewer pages than an interpreted one, and every page a forked job touches is a
  copy-on-write fault.

``python -m scheduler.compiled`` builds what is stale (``scripts/setup`` runs it) and
returns at once when every build is fresh. A build is used only when its fingerprint (a
SHA-256 of its source files and of the interpreter) matches the files on disk, so edited
code never runs from an old build; otherwise the source runs. ``SCHEDBUS_PURE`` set: the
source runs everywhere. A process runs all the modules of a build compiled or none (a
compiled module only takes the compiled classes of another), so a process switches before
it imports any of them.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import click

import scheduler

_FINGERPRINT = "fingerprint"


@dataclass(frozen=True)
class Build:
    """A set of modules compiled together into ``base_dir() / name``: those of
    ``files(root)`` (relative to the directory holding the ``scheduler`` package), which
    live in ``packages`` (whose ``__init__`` modules are never compiled)."""

    name: str
    packages: tuple[str, ...]
    files: Callable[[Path], list[Path]]
    """The source files, relative to the root given."""


def _simulator_files(root: Path) -> list[Path]:
    """Every module of ``scheduler/policy``, the simulator's loop, nodes, metrics, fleet
    and workload modules, and the producer's workload generator."""
    policy = sorted(
        path.relative_to(root)
        for path in (root / "scheduler" / "policy").rglob("*.py")
        if path.name != "__init__.py"
    )
    simulator = ("engine", "node", "metrics", "fleet", "entries", "periodic", "costs", "world",
                 "workload")  # fmt: skip
    simulate = [Path("scheduler", "simulate", f"{name}.py") for name in simulator]
    return [*policy, *simulate, Path("scheduler", "producer", "workload.py")]


def _fork_server_files(root: Path) -> list[Path]:
    """The fork server, a job's setup and containment, and what ``/proc`` says of
    processes (which containment reads)."""
    names = ("forkserver", "child", "containment", "proc_stat")
    return [Path("scheduler", "worker", f"{name}.py") for name in names]


SIMULATOR = Build(
    "simulator",
    ("scheduler.policy", "scheduler.policy.dispatch", "scheduler.simulate", "scheduler.producer"),
    _simulator_files,
)
"""The compiled core: the policy (the bus's dispatch core among it) and the simulator's
hot modules."""

DISPATCH_CORE = "scheduler.policy.dispatch.dispatcher"
"""The module whose build says whether a process runs the compiled core."""

FORK_SERVER = Build("forkserver", ("scheduler.worker",), _fork_server_files)
"""The fork server's compiled modules."""

BUILDS = (SIMULATOR, FORK_SERVER)


def package_root() -> Path:
    """The directory holding the ``scheduler`` package."""
    return Path(scheduler.__file__).resolve().parent.parent


def base_dir() -> Path:
    """Where the builds live: ``SCHEDBUS_COMPILED_DIR``, else ``schedbus-compiled`` in the
    running Python's prefix (the virtualenv)."""
    return Path(os.environ.get("SCHEDBUS_COMPILED_DIR") or Path(sys.prefix) / "schedbus-compiled")


def build_dir(build: Build) -> Path:
    """Where ``build`` lives."""
    return base_dir() / build.name


def module_names(build: Build, root: Path) -> list[str]:
    """The dotted names of ``build``'s modules."""
    return [".".join(path.with_suffix("").parts) for path in build.files(root)]


def fingerprint(build: Build, root: Path) -> str:
    """A digest of ``build``'s sources under ``root`` and of the interpreter's ABI: a
    build whose fingerprint differs from this one does not match the source any more."""
    digest = hashlib.sha256()
    digest.update(f"{sys.version} {sysconfig.get_config_var('EXT_SUFFIX')}\n".encode())
    for path in build.files(root):
        digest.update(f"{path.as_posix()}\n".encode())
        digest.update(hashlib.sha256((root / path).read_bytes()).digest())
    return digest.hexdigest()


def why_not(build: Build, dest: Path, root: Path) -> str | None:
    """Why the build in ``dest`` cannot be used for the sources in ``root``; None if it
    can."""
    try:
        built = (dest / _FINGERPRINT).read_text().strip()
    except FileNotFoundError:
        return f"no compiled {build.name} build in {dest}"
    if built != fingerprint(build, root):
        return f"the compiled {build.name} build in {dest} was built from other sources"
    return None


def usable(build: Build) -> tuple[Path | None, str | None]:
    """``build``'s directory if this process may run it (it matches the sources and
    ``SCHEDBUS_PURE`` is not set), else None and why not (None when ``SCHEDBUS_PURE``
    asked for the source)."""
    if os.environ.get("SCHEDBUS_PURE"):
        return None, None
    dest = build_dir(build)
    reason = why_not(build, dest, package_root())
    return (dest, None) if reason is None else (None, reason)


def use(build: Build) -> str | None:
    """Make ``build``'s compiled modules the ones the next imports load if this process may
    run them (:func:`usable`) and has imported none of them yet; return why it runs the
    source otherwise (None when it runs the build, or ``SCHEDBUS_PURE`` asked for the
    source)."""
    dest, reason = usable(build)
    loaded = [name for name in module_names(build, package_root()) if name in sys.modules]
    if dest is not None and loaded:
        dest, reason = None, f"{loaded[0]} was imported before the compiled {build.name} build"
    if dest is not None:
        activate(build, dest)
    return reason


def runs_compiled(module_name: str) -> bool:
    """Whether this process runs the compiled build of module ``module_name`` (importing
    it if need be)."""
    module = importlib.import_module(module_name)
    return str(module.__file__).endswith(str(sysconfig.get_config_var("EXT_SUFFIX")))


def core_status() -> str:
    """``compiled`` if this process runs the compiled core (:data:`DISPATCH_CORE`), else
    ``interpreted`` and why, for a process's log."""
    if runs_compiled(DISPATCH_CORE):
        return "compiled"
    if os.environ.get("SCHEDBUS_PURE"):
        return "interpreted (SCHEDBUS_PURE is set)"
    _, reason = usable(SIMULATOR)
    return f"interpreted ({reason or 'the policy was imported before the build was chosen'})"


def activate(build: Build, dest: Path) -> None:
    """Make the modules built in ``dest`` the ones the next imports of ``build``'s
    modules load. The caller has imported none of them yet."""
    sys.path.append(str(dest))  # mypyc's shared runtime module lives at the top
    for package in build.packages:
        module = importlib.import_module(package)
        module.__path__.insert(0, str(dest.joinpath(*package.split("."))))


def compile_into(build: Build, dest: Path, jobs: int) -> None:
    """Compile ``build``'s modules with mypyc into ``dest``, replacing what is there only
    once the whole build succeeded; ``jobs`` C compilers run at once."""
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
                [path.as_posix() for path in build.files(work)],
                opt_level="3",
                multi_file=True,
            )
            setup(
                name=f"schedbus-compiled-{build.name}",
                # mypycify's list is typed as either setuptools' or distutils' Extension
                ext_modules=cast("list[Extension]", extensions),
                script_args=["--quiet", "build_ext", "--build-lib", str(out), "-j", str(jobs)],
            )
        finally:
            os.chdir(here)
        (out / _FINGERPRINT).write_text(fingerprint(build, work) + "\n")
        staged = dest.with_name(dest.name + ".new")
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(out, staged)
        shutil.rmtree(dest, ignore_errors=True)
        staged.rename(dest)


@click.command()
@click.option("--force", is_flag=True, help="Build even the builds that are fresh.")
@click.option("--check", is_flag=True,
              help="Build nothing: exit 0 if every build matches the sources, else 1.")  # fmt: skip
def cli(force: bool, check: bool) -> None:
    """Build the compiled modules (mypyc and a C compiler: the simulator's core, the fork
    server's modules) into the virtualenv, or SCHEDBUS_COMPILED_DIR; quick when every
    build there matches the sources."""
    root = package_root()
    stale = 0
    for build in BUILDS:
        dest = build_dir(build)
        reason = why_not(build, dest, root)
        if check or (reason is None and not force):
            click.echo(
                f"compiled {build.name}: {reason or f'{dest} matches the sources'}", err=True
            )
            stale += reason is not None
            continue
        click.echo(f"compiled {build.name}: building into {dest} with mypyc", err=True)
        compile_into(build, dest, os.cpu_count() or 1)
        click.echo(f"compiled {build.name}: built into {dest}", err=True)
    if check and stale:
        raise SystemExit(1)


if __name__ == "__main__":
    cli()
