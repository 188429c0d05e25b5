"""The simulator's compiled core: ``scripts/setup`` builds it, ``python -m
scheduler.simulate`` runs it when it matches the sources, and it decides exactly what the
interpreted source decides. Each run is a fresh interpreter: a process runs all of the
modules compiled or none."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

FLEET_EVENTS = ["kill B at 20", "bus-restart for 2 at 30", "join E size 3 at 40", "stop C at 50"]


def _simulate(args: list[str], **env: str) -> tuple[dict[str, Any], str]:
    """Run ``python -m scheduler.simulate ARGS --json``: its summary and its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "scheduler.simulate", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=50,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary, result.stderr


def _workload(path: Path) -> Path:
    """400 jobs of mixed priorities, runtimes and timeouts, some failing, some retried,
    some depending on others; a broadcast, a schedule and a cancel."""
    rng = random.Random(11)
    lines: list[dict[str, Any]] = [
        {"at": 0, "until": 55, "schedule": {"name": "tick", "task": "sleep", "every": 5,
                                            "runtime": 1, "max_instances": 1}},
        {"at": 12, "task": "sleep", "runtime": 1, "broadcast": True, "id": "warm"},
        {"at": 14, "cancel": "j30"},
    ]  # fmt: skip
    for n in range(400):
        job: dict[str, Any] = {
            "at": round(n * 0.15, 3),
            "task": "sleep",
            "id": f"j{n}",
            "priority": rng.randint(0, 9),
            "runtime": round(rng.uniform(0.2, 4.0), 3),
        }
        if n % 17 == 0:
            job["timeout"] = 1.0
        if n % 23 == 0:
            job |= {"fail": True, "max_retries": 1}
        if n % 29 == 5:
            job["depends_on"] = [f"j{n - 5}"]
        lines.append(job)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_compiled_and_interpreted_runs_decide_the_same(tmp_path: Path) -> None:
    args = ["--jobs", str(_workload(tmp_path / "jobs.jsonl")), "--schedulers", "4", "-s", "2"]
    for event in FLEET_EVENTS:
        args += ["--event", event]
    fast, fast_err = _simulate(args)
    slow, _ = _simulate(args, SCHEDBUS_PURE="1")
    assert fast.pop("simulation")["core"] == "compiled", fast_err
    assert slow.pop("simulation")["core"] == "interpreted"
    assert fast == slow
    # the comparison covers the paths that matter: every one of them was taken
    assert fast["evictions"] and fast["steals"] and fast["timeouts"] and fast["retries"]
    assert fast["fired"] and fast["cancels"] and fast["finals"]["cancelled"]


def test_a_build_from_other_sources_is_not_used(tmp_path: Path) -> None:
    build = tmp_path / "simulator"
    build.mkdir()
    (build / "fingerprint").write_text("0" * 64 + "\n")
    summary, err = _simulate(["--count", "50"], SCHEDBUS_COMPILED_DIR=str(tmp_path))
    assert summary["simulation"]["core"] == "interpreted"
    assert f"the compiled simulator build in {build} was built from other sources" in err
    summary, err = _simulate(["--count", "50"], SCHEDBUS_COMPILED_DIR=str(tmp_path / "none"))
    assert summary["simulation"]["core"] == "interpreted"
    assert f"no compiled simulator build in {tmp_path / 'none' / 'simulator'}" in err


def test_a_process_that_imported_the_policy_first_stays_interpreted() -> None:
    code = (
        "import scheduler.policy.job\n"
        "from scheduler.simulate import compiled\n"
        "compiled.use()\n"
        "print(compiled.in_use())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.strip() == "interpreted"
    assert "scheduler.policy.job was imported before the compiled simulator build" in result.stderr
