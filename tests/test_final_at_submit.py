"""A job that is already final when the bus accepts it (skipped because a dependency had
already ended other than ``succeeded``, expired because its ``run_at`` was past its
grace) still ends for the producer that submitted it: its handle's ``wait()`` returns,
``producer --wait`` exits, the record keeps why, and the submitter hears each final
event once; a v1 producer is still sent nothing.

Before the fix the bus subscribed the submitter to a job only while its core tracked it,
so the final event of a job that ended inside its own submit went to monitors only, and
the submitter waited for ever (found by the README audit)."""

from __future__ import annotations

import json
import time
from collections import Counter

from conftest import Commands, unit
from test_bus import Frame, client, drain_after_close, next_event, recv, register
from websockets.asyncio.client import ClientConnection

from scheduler.bus.server import BusServer
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobPayload

UNSERVED = "nobody-serves-this"
"""A task no scheduler serves: its jobs wait queued, never run."""


async def cancelled_dependency(client: ProducerClient, job_id: str) -> str:
    """A job of a task nobody serves, cancelled: a dependency that ended other than
    ``succeeded`` before anything depends on it."""
    dep = await client.submit(JobPayload(task=UNSERVED, job_id=job_id))
    await client.cancel(dep)
    assert (await dep.wait(timeout=5 * unit())).event == "cancelled"
    return dep


async def heard_until_barrier(ws: ClientConnection) -> list[Frame]:
    """Every frame ``ws`` receives until the bus has handled all it sent (the events a
    request causes follow its reply, so they come before the barrier's reply)."""
    await ws.send('{"cmd": "barrier", "ref": "barrier"}')
    heard = []
    while (frame := await recv(ws)).get("ref") != "barrier":
        heard.append(frame)
    return heard


def past() -> float:
    """A ``run_at`` an hour ago: past any grace these tests give."""
    return time.time() - 3600


async def test_a_job_skipped_at_submit_ends_for_its_submitter(bus: BusServer) -> None:
    async with ProducerClient(bus.url) as client:
        dep = await cancelled_dependency(client, "dep-a")
        job = await client.submit(JobPayload(task=UNSERVED, depends_on=[dep]))
        final = await job.wait(timeout=5 * unit())
    assert final.event == "skipped"
    assert final.error == "dependency dep-a ended cancelled"


async def test_a_job_skipped_at_submit_keeps_its_reason(bus: BusServer) -> None:
    async with ProducerClient(bus.url) as client:
        dep = await cancelled_dependency(client, "dep-b")
        accepted = await client.submit_accepted(JobPayload(task=UNSERVED, depends_on=[dep]))
        state = await client.job_status(accepted.id)
    assert state.state == "skipped"
    assert state.error == "dependency dep-b ended cancelled"


async def test_a_job_expired_at_submit_ends_for_its_submitter(bus: BusServer) -> None:
    async with ProducerClient(bus.url) as client:
        job = await client.submit(JobPayload(runtime=0.1, run_at=past(), misfire_grace=1.0))
        final = await job.wait(timeout=5 * unit())
        state = await client.job_status(job.id)
    assert final.event == "expired"
    assert (state.state, state.error) == ("expired", final.error)
    assert state.error is not None and "grace" in state.error


async def test_a_batch_hears_each_final_event_once_whichever_way_its_jobs_end(
    bus: BusServer,
) -> None:
    """One ``submit_many``: a job skipped at submit, one skipped because of it (same
    batch), one expired at submit, and one that waits (not final at submit), then
    cancelled. The submitter hears each job's final event exactly once."""
    async with ProducerClient(bus.url) as producer:
        dep = await cancelled_dependency(producer, "dep-c")
    async with client(bus) as ws:
        await register(ws, "producer")
        jobs = [
            {"task": UNSERVED, "job_id": "skip-1", "depends_on": [dep]},
            {"task": UNSERVED, "job_id": "skip-2", "depends_on": ["skip-1"]},
            {"runtime": 0.1, "job_id": "late", "run_at": past(), "misfire_grace": 1.0},
            {"task": UNSERVED, "job_id": "waits"},
        ]
        await ws.send(json.dumps({"cmd": "submit_many", "jobs": jobs}))
        await ws.send(json.dumps({"cmd": "cancel", "id": "waits"}))
        frames = await heard_until_barrier(ws)
    replies = [f for f in frames if f["type"] != "event"]
    assert [r["id"] for r in replies[0]["results"]] == ["skip-1", "skip-2", "late", "waits"]
    assert replies[1]["state"] == "cancelled"
    events = Counter((f["id"], f["event"]) for f in frames if f["type"] == "event")
    finals = {key: n for key, n in events.items() if key[1] != "accepted"}
    assert finals == {
        ("skip-1", "skipped"): 1,
        ("skip-2", "skipped"): 1,
        ("late", "expired"): 1,
        ("waits", "cancelled"): 1,
    }


async def test_a_single_submit_hears_its_events_once(bus: BusServer) -> None:
    """The reply, then the job's ``accepted`` and ``skipped`` events, each once."""
    async with ProducerClient(bus.url) as producer:
        dep = await cancelled_dependency(producer, "dep-d")
    async with client(bus) as ws:
        await register(ws, "producer")
        payload = {"task": UNSERVED, "job_id": "once", "depends_on": [dep]}
        await ws.send(json.dumps({"cmd": "job_request", "payload": payload}))
        heard = await heard_until_barrier(ws)
    assert [(f["type"], f.get("event")) for f in heard] == [
        ("accepted", None),
        ("event", "accepted"),
        ("event", "skipped"),
    ]


async def test_a_v1_producer_is_sent_nothing_of_a_job_final_at_submit(bus: BusServer) -> None:
    async with ProducerClient(bus.url) as producer:
        dep = await cancelled_dependency(producer, "dep-e")
    async with client(bus) as monitor, client(bus) as v1:
        await register(monitor, "monitor")
        await v1.send('{"cmd": "register", "type": "producer"}')
        payload = {"runtime": 0.1, "job_id": "v1-job", "depends_on": [dep]}
        await v1.send(json.dumps({"cmd": "job_request", "payload": payload}))
        skipped = await next_event(monitor, "skipped")
        assert (skipped["id"], skipped["error"]) == ("v1-job", "dependency dep-e ended cancelled")
        assert await drain_after_close(v1) == []


async def test_producer_wait_ends_for_a_job_skipped_at_submit(
    bus: BusServer, commands: Commands
) -> None:
    async with ProducerClient(bus.url) as client:
        dep = await cancelled_dependency(client, "dep-f")
    code, _ = await commands.run(
        "scheduler.producer",
        "--bus",
        bus.url,
        "--task",
        UNSERVED,
        "--after",
        dep,
        "--count",
        "1",
        "--wait",
        "--json",
        timeout=15 * unit(),
    )
    assert code == 3
