"""``python -m scheduler.bus``: its help, and one real process started and stopped."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

from click.testing import CliRunner
from conftest import unit
from websockets.asyncio.client import connect

from scheduler.bus.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def test_help_explains_every_option() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--token", "--allow-origin", "--log-level"):
        assert option in result.output
    assert "SCHEDBUS_TOKEN" in result.output
    assert "127.0.0.1" in result.output and "8101" in result.output


def test_a_bad_option_is_refused() -> None:
    result = CliRunner().invoke(cli, ["--port", "70000"])
    assert result.exit_code == 2
    assert "--port" in result.output


async def read_url(stderr: asyncio.StreamReader) -> str:
    """Read the bus's log until it says where it listens."""
    while True:
        line = (await stderr.readline()).decode()
        assert line, "the bus exited before listening"
        match = re.search(r"bus listening on (ws://\S+)", line)
        if match:
            return match.group(1)


async def test_the_command_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = os.environ | {"PYTHONUNBUFFERED": "1", "SCHEDBUS_TOKEN": "t0ken"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scheduler.bus", "--port", "0", "--log-level", "debug",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        url = await asyncio.wait_for(read_url(proc.stderr), 20 * unit())
        assert url.startswith("ws://127.0.0.1:") and not url.endswith(":0")
        async with connect(url, compression=None, proxy=None) as ws:
            register = {"cmd": "register", "type": "producer", "protocol": 2, "token": "t0ken"}
            await ws.send(json.dumps(register))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5 * unit()))["type"] == "registered"
            await ws.send('{"cmd": "job_request", "payload": {"priority": 1, "runtime": 1}}')
            assert json.loads(await asyncio.wait_for(ws.recv(), 5 * unit()))["type"] == "accepted"
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(ws.wait_closed(), 10 * unit())
        assert await asyncio.wait_for(proc.wait(), 10 * unit()) == 0
        log = (await proc.stderr.read()).decode()
        assert "SIGTERM received" in log and "bus closed: 1 jobs accepted" in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
