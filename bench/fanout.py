"""Fan-out: one bus, many schedulers that finish every job at once, to measure the bus.

``python -m bench.fanout --url URL --count 20 --size 5`` runs ``count`` lightweight v2
schedulers in one process: each registers, beats, and answers every ``assign`` with
``started`` then ``succeeded`` straight away (no process is forked). It logs ``ready``
once all are registered and, on SIGTERM, one JSON line with how many jobs each got.
:func:`measure` is the producer side, run by the bench.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.stats import Json, rate
from bench.system import client_token, cpu_seconds
from bench.tracker import Tracker
from scheduler import codec, protocol_types
from scheduler.producer.client import ProducerClient
from scheduler.protocol import Assign, Heartbeat, JobPayload, Register, Registered, Report


async def _register(url: str, name: str, size: int) -> tuple[ClientConnection, float]:
    ws = await connect(url, compression=None, max_size=protocol_types.MAX_FRAME_BYTES)
    register = Register(
        type="scheduler",
        protocol=2,
        name=name,
        token=client_token("scheduler"),
        size=size,
        tasks=["sleep"],
    )
    await ws.send(codec.encode(register))
    reply = codec.decode_bus(await ws.recv())
    if not isinstance(reply, Registered):
        raise RuntimeError(f"{name}: register refused: {reply!r}")
    lease = getattr(reply, "lease_s", None)
    return ws, min(1.0, lease / 3) if lease else 1.0


async def _beat(ws: ClientConnection, every: float) -> None:
    frame = codec.encode(Heartbeat(running=0, queued=0))
    while True:
        await asyncio.sleep(every)
        await ws.send(frame)


async def _serve(
    ws: ClientConnection, beat_every: float, counts: dict[str, int], name: str
) -> None:
    beat = asyncio.create_task(_beat(ws, beat_every))
    try:
        async for frame in ws:
            message = codec.decode_bus(frame)
            if not isinstance(message, Assign):
                continue
            job = message.job
            await ws.send(codec.encode(Report("started", job.id, job.attempt)))
            done = Report(
                "succeeded", job.id, job.attempt, exit_code=0, wall_s=0.0, cpu_s=0.0, max_rss_kb=0
            )
            await ws.send(codec.encode(done))
            counts[name] += 1
    except ConnectionClosed:
        pass
    finally:
        beat.cancel()


async def fake_schedulers(url: str, count: int, size: int) -> dict[str, int]:
    """Run ``count`` fake schedulers until SIGTERM; return jobs assigned to each."""
    counts = {f"fake-{i:02d}": 0 for i in range(count)}
    links = [await _register(url, name, size) for name in counts]
    print(f"ready {count}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [
        asyncio.create_task(_serve(ws, every, counts, name))
        for (ws, every), name in zip(links, counts, strict=True)
    ]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return counts


async def measure(url: str, bus: psutil.Process, jobs: int, timeout: float) -> Json:
    """Submit ``jobs`` no-op jobs (pipelined) and wait for every final event.

    Returns the rate from the first submit to the last final event received, and the
    bus's CPU (user + system, psutil) per job over the same interval.
    """
    payload = JobPayload(priority=5, runtime=1e-6)
    async with (
        ProducerClient(url, name="bench-fanout", token=client_token("producer")) as client,
        Tracker(client) as tracker,
    ):
        cpu0 = cpu_seconds(bus)
        t0 = time.perf_counter()
        await asyncio.gather(*(client.submit(payload) for _ in range(jobs)))
        await tracker.wait(lambda: len(tracker.finals) >= jobs, timeout, f"{jobs} final events")
        elapsed = max(seen.recv_perf for seen in tracker.finals.values()) - t0
        cpu = cpu_seconds(bus) - cpu0
    return {
        "dispatch_jobs_per_s": rate(jobs, elapsed),
        "bus_cpu_us_per_job": round(cpu * 1e6 / jobs, 1),
        "bus_cpu_share": round(cpu / elapsed, 2),
        "jobs": jobs,
    }


def assigned_spread(log_text: str) -> Json | None:
    """``{min, max}`` jobs per fake scheduler from the JSON line logged on exit, if any."""
    for line in reversed(log_text.splitlines()):
        if line.startswith("{"):
            counts = json.loads(line)
            values = list(counts.values())
            return {"min": min(values), "max": max(values)} if values else None
    return None


def main(argv: list[str]) -> None:
    """``--url URL --count N --size S``: run the fake schedulers, print counts on SIGTERM."""
    args = dict(zip(argv[::2], argv[1::2], strict=False))
    counts = asyncio.run(
        fake_schedulers(args["--url"], int(args.get("--count", "20")), int(args.get("--size", "5")))
    )
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
