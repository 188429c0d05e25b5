"""Every ``schedbus-*`` console script the package installs runs its command: each is
started as a real process from the environment's ``bin`` directory."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT, unit

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_command_has_a_console_script() -> None:
    assert set(SCRIPTS) == {
        "schedbus-bus",
        "schedbus-scheduler",
        "schedbus-producer",
        "schedbus-monitor",
        "schedbus-worker",
        "schedbus-jobs",
        "schedbus-schedules",
        "schedbus-status",
        "schedbus-dashboard",
    }


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_console_script_runs_its_command(script: str) -> None:
    path = Path(sys.executable).parent / script
    assert path.exists(), f"{script} is not installed next to {sys.executable}"
    done = subprocess.run(
        [str(path), "--help"], capture_output=True, text=True, timeout=30 * unit(), check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Usage: {script} "), done.stdout[:200]
