"""What monitors that never read do to a real bus's memory and ingest (run by hand).

Starts ``python -m scheduler.bus`` (from ``--source``, default this checkout), connects
``--monitors`` v2 monitors that never read (small receive buffers), makes a scheduler
report ``--reports`` bulky events that the bus fans out to every monitor, and meanwhile
times how long a producer takes to get ``--jobs`` submits accepted. Prints the bus's RSS
at start, at its peak, and after the monitors are gone, and the ingest time with and
without the laggards::

    .venv/bin/python -m bench.slow_monitors --monitors 1000
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import psutil
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
Tokens = dict[str, str]
"""The token of each role in the measured bus's token file (empty for a bus without)."""


def _register(tokens: Tokens, kind: str, **fields: object) -> str:
    """A v2 register frame for ``kind``, with its token if the bus has one."""
    token = {"token": tokens[kind]} if kind in tokens else {}
    return json.dumps({"cmd": "register", "type": kind, "protocol": 2, **token, **fields})


def _tokens(path: Path) -> Tokens:
    """The tokens in ``path`` by role; none if the bus made no such file (older code)."""
    if not path.exists():
        return {}
    return {entry["role"]: entry["token"] for entry in json.loads(path.read_text())}


def _mb(value: int) -> str:
    return f"{value / 2**20:.0f} MB"


async def _deaf_monitor(port: int, tokens: Tokens) -> ClientConnection:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    ws = await connect(f"ws://127.0.0.1:{port}", sock=sock, compression=None, proxy=None)
    await ws.send(_register(tokens, "monitor"))
    await ws.recv()
    return ws


async def _ingest(port: int, tokens: Tokens, jobs: int) -> float:
    """Seconds until ``jobs`` pipelined submits are all accepted."""
    async with connect(f"ws://127.0.0.1:{port}", compression=None, proxy=None) as ws:
        await ws.send(_register(tokens, "producer"))
        await ws.recv()
        frame = json.dumps({"cmd": "job_request", "payload": {"task": "unserved"}})
        started = time.perf_counter()

        async def read() -> None:
            accepted = 0
            while accepted < jobs:
                accepted += json.loads(await ws.recv())["type"] == "accepted"

        reader = asyncio.create_task(read())
        for _ in range(jobs):
            await ws.send(frame)
        await reader
        return time.perf_counter() - started


async def _flood(port: int, tokens: Tokens, reports: int, size: int) -> None:
    async with connect(f"ws://127.0.0.1:{port}", compression=None, proxy=None) as ws:
        await ws.send(_register(tokens, "scheduler", name="s"))
        await ws.recv()
        async with connect(f"ws://127.0.0.1:{port}", compression=None, proxy=None) as producer:
            await producer.send(_register(tokens, "producer"))
            await producer.send('{"cmd": "job_request", "payload": {"priority": 1, "runtime": 9}}')
            job = json.loads(await ws.recv())["job"]
        bulky = {"cmd": "report", "event": "started", "id": job["id"], "attempt": 1}
        for _ in range(reports):
            await ws.send(json.dumps(bulky | {"error": "x" * size}))
        await ws.send('{"cmd": "barrier", "ref": 1}')
        while json.loads(await ws.recv()).get("ref") != 1:
            pass


async def _measure(
    source: Path, monitors: int, reports: int, size: int, jobs: int, options: tuple[str, ...]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = tempfile.mkdtemp(prefix="schedbus-slow-monitors-")
    bus = subprocess.Popen(
        [sys.executable, "-m", "scheduler.bus", "--port", str(port), "--db", ":memory:",
         "--log-level", "error", *options],
        cwd=source, stderr=subprocess.DEVNULL,
        env=os.environ | {"PYTHONPATH": str(source), "XDG_STATE_HOME": state},
    )  # fmt: skip
    try:
        proc = psutil.Process(bus.pid)
        for _ in range(200):
            if any(c.laddr.port == port for c in proc.net_connections()):
                break
            await asyncio.sleep(0.05)
        tokens = _tokens(Path(state) / "schedbus" / "tokens.json")
        quiet = await _ingest(port, tokens, jobs)
        start = proc.memory_info().rss
        deaf = [await _deaf_monitor(port, tokens) for _ in range(monitors)]
        connected = proc.memory_info().rss
        peak = connected

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, proc.memory_info().rss)
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        await _flood(port, tokens, reports, size)
        loaded = await _ingest(port, tokens, jobs)
        sampler.cancel()
        for ws in deaf:
            ws.transport.abort()
        await asyncio.sleep(3)
        after = proc.memory_info().rss
        print(
            f"{source}: {monitors} monitors, {reports} events of {size} B:"
            f" RSS start {_mb(start)}, {monitors} monitors connected {_mb(connected)},"
            f" peak {_mb(peak)}, 3 s after they left {_mb(after)};"
            f" {jobs} submits accepted in {quiet:.2f} s alone, {loaded:.2f} s after the flood"
        )
    finally:
        bus.terminate()
        bus.wait(10)
        shutil.rmtree(state, ignore_errors=True)


@click.command()
@click.option("--source", type=click.Path(path_type=Path), default=ROOT, show_default=True)
@click.option("--monitors", default=1000, show_default=True)
@click.option("--reports", default=300, show_default=True)
@click.option("--size", default=2000, show_default=True, help="Bytes of each event's error.")
@click.option("--jobs", default=2000, show_default=True)
@click.argument("options", nargs=-1)
def cli(
    source: Path, monitors: int, reports: int, size: int, jobs: int, options: tuple[str, ...]
) -> None:
    """Measure a bus (OPTIONS are passed to it) under monitors that never read."""
    asyncio.run(_measure(source, monitors, reports, size, jobs, options))


if __name__ == "__main__":
    cli()
