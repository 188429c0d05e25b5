"""The compiled builds (:mod:`scheduler.compiled`): each one's fingerprint follows every
source file it is built from, and ``python -m scheduler.compiled --check`` says whether
each build matches, and the bus says which dispatch core it runs. What each build runs
is tested where it runs: ``tests/test_simulate_compiled.py``, ``tests/test_forkserver.py``,
and every test that starts ``python -m scheduler.bus`` (the compiled core once built)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import unit

from scheduler import compiled


@pytest.mark.parametrize("build", compiled.BUILDS, ids=lambda build: build.name)
def test_the_fingerprint_follows_every_compiled_source(
    build: compiled.Build, tmp_path: Path
) -> None:
    root = compiled.package_root()
    files = build.files(root)
    for path in files:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / path, tmp_path / path)
    assert compiled.fingerprint(build, tmp_path) == compiled.fingerprint(build, root)
    for path in files:
        changed = tmp_path / path
        text = changed.read_text()
        changed.write_text(text + "\n")
        assert compiled.fingerprint(build, tmp_path) != compiled.fingerprint(build, root), path
        changed.write_text(text)
    missing = f"no compiled {build.name} build in {tmp_path}"
    assert compiled.why_not(build, tmp_path, root) == missing


def test_the_builds_hold_the_policy_and_the_fork_servers_job_side() -> None:
    root = compiled.package_root()
    policy = {p for p in (root / "scheduler" / "policy").rglob("*.py") if p.name != "__init__.py"}
    assert {root / f for f in compiled.SIMULATOR.files(root)} >= policy
    assert Path("scheduler/simulate/engine.py") in compiled.SIMULATOR.files(root)
    assert compiled.module_names(compiled.FORK_SERVER, root) == [
        "scheduler.worker.forkserver",
        "scheduler.worker.child",
        "scheduler.worker.containment",
        "scheduler.worker.proc_stat",
    ]


def test_check_says_whether_each_build_matches(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "scheduler.compiled", "--check"]
    fresh = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert fresh.returncode == 0, fresh.stderr
    env = {**os.environ, "SCHEDBUS_COMPILED_DIR": str(tmp_path)}
    missing = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
    assert missing.returncode == 1
    for build in compiled.BUILDS:
        assert f"no compiled {build.name} build in {tmp_path / build.name}" in missing.stderr


async def _bus_core_line(tmp_path: Path, **env: str) -> str:
    """Start ``python -m scheduler.bus`` with ``env`` added, stop it once it says which
    dispatch core it runs (after it listens), and return what it said."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scheduler.bus", "--port", "0", "--db", ":memory:",
        env=os.environ | {"XDG_STATE_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"} | env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        while "dispatch core:" not in (lines or [""])[-1]:
            line = (await asyncio.wait_for(proc.stderr.readline(), 20 * unit())).decode()
            assert line, f"the bus exited before saying its core: {lines}"
            lines.append(line)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10 * unit()) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert any("bus listening on" in line for line in lines), lines
    return lines[-1].split("dispatch core: ", 1)[1].strip()


async def test_the_bus_runs_the_compiled_core_when_its_build_matches(tmp_path: Path) -> None:
    assert await _bus_core_line(tmp_path) == "compiled"
    assert await _bus_core_line(tmp_path, SCHEDBUS_PURE="1") == "interpreted (SCHEDBUS_PURE is set)"
    none = tmp_path / "none"
    assert await _bus_core_line(tmp_path, SCHEDBUS_COMPILED_DIR=str(none)) == (
        f"interpreted (no compiled simulator build in {none / 'simulator'})"
    )
