"""The benchmark command end to end: a quick run against real buses and schedulers."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from conftest import ROOT, unit


async def test_a_quick_bench_run_talks_to_a_real_bus_with_tokens(tmp_path: Path) -> None:
    """The bench's own clients (in its process and in the schedulers it starts) present the
    tokens of the buses it starts, which keep their token file in the bench's scratch
    directory, never the user's."""
    out = tmp_path / "bench.json"
    env = os.environ | {"XDG_STATE_HOME": str(tmp_path / "user-state")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.run", "--quick", "--only", "ingest,latency,ingest10,million",
        "--out", str(out), cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), 60 * unit())
    results = json.loads(out.read_text())
    assert proc.returncode == 0 and results["errors"] == {}, stderr.decode()[-2000:]
    assert results["submit_to_start_ms"]["p50"] > 0 and results["ingest_jobs_per_s"] > 0
    assert results["ingest_many_producers"]["producers"] == 10
    queued = results["queued_jobs"]
    assert queued["queued_after_restart"] == queued["jobs"] > 0
    assert not (tmp_path / "user-state").exists()
