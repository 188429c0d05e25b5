"""The periodic figure: how late each firing of an interval schedule starts.

An admin client adds an ``every`` schedule of no-op ``sleep`` jobs to an idle bus with
one scheduler; a monitor connection collects the ``started`` events of its firings.
Lateness = the bus's ``time.time()`` stamp on a firing's ``started`` event minus the
firing's scheduled time (read from its job id, ``NAME@<time>``). Same machine, same clock.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

from websockets.asyncio.client import connect

from bench.stats import Json, summary
from bench.system import client_token
from scheduler.producer.client import ProducerClient
from scheduler.protocol_schedules import ScheduleSpec

NAME = "bench-periodic"


async def periodic_lateness(url: str, firings: int, every: float = 0.5) -> Json:
    """Add an ``every`` schedule, time ``firings`` firings' starts, remove it."""
    lateness: list[float] = []
    async with connect(url, compression=None, proxy=None) as monitor:
        register = {"cmd": "register", "type": "monitor", "protocol": 2}
        token = client_token("monitor")
        await monitor.send(json.dumps(register | ({"token": token} if token else {})))
        async with ProducerClient(url, name="bench-periodic", token=client_token("admin")) as admin:
            spec = ScheduleSpec(name=NAME, task="sleep", every=every, runtime=1e-6, priority=0)
            await admin.schedule_add(spec)
            try:
                async with asyncio.timeout(every * firings * 2 + 30):
                    while len(lateness) < firings:
                        lateness.extend(_started_lateness(await monitor.recv()))
            finally:
                await admin.schedule_change("remove", NAME)
    return {"periodic_fire_lateness_ms": summary(lateness) | {"every_s": every}}


def _started_lateness(frame: str | bytes) -> list[float]:
    """The lateness (ms) of a firing whose ``started`` event ``frame`` is, else nothing."""
    message = json.loads(frame)
    job_id = str(message.get("id", ""))
    if message.get("event") != "started" or not job_id.startswith(f"{NAME}@"):
        return []
    scheduled = datetime.fromisoformat(job_id.partition("@")[2]).timestamp()
    return [(float(message["time"]) - scheduled) * 1000]
