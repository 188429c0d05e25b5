"""A real bus on 127.0.0.1 and an ephemeral port, driven by raw WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from conftest import unit
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from scheduler.bus.server import BusConfig, BusServer
from scheduler.policy.dispatch import Dispatcher

Frame = dict[str, Any]
V1_JOB = '{"cmd": "job_request", "payload": {"priority": 3, "runtime": 0.5}}'


def timeout() -> float:
    return 5 * unit()


@asynccontextmanager
async def client(bus: BusServer, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    """A raw connection to ``bus``, as a CLI client makes it (no compression, no proxy)."""
    async with connect(bus.url, compression=None, proxy=None, **kwargs) as ws:
        yield ws


async def recv(ws: ClientConnection) -> Frame:
    """The next frame, decoded; fails the test if none comes in time."""
    frame = await asyncio.wait_for(ws.recv(), timeout())
    assert isinstance(frame, str), "the bus sends text frames only"
    decoded = json.loads(frame)
    assert isinstance(decoded, dict)
    return decoded


async def register(ws: ClientConnection, role: str, **fields: Any) -> str:
    """Register as a v2 ``role``; return the name the bus gave."""
    await ws.send(json.dumps({"cmd": "register", "type": role, "protocol": 2, **fields}))
    reply = await recv(ws)
    assert reply["type"] == "registered", reply
    name = reply["name"]
    assert isinstance(name, str)
    return name


async def submit(
    ws: ClientConnection, priority: int = 3, runtime: float = 0.5, **payload: Any
) -> str:
    """Submit a job as a v2 producer; return its id from the ``accepted`` reply.

    The reply must be the next frame: read the events of earlier jobs first.
    """
    payload |= {"priority": priority, "runtime": runtime}
    await ws.send(json.dumps({"cmd": "job_request", "payload": payload}))
    reply = await recv(ws)
    assert reply["type"] == "accepted", reply
    job_id = reply["id"]
    assert isinstance(job_id, str)
    return job_id


async def report(ws: ClientConnection, event: str, job_id: str, attempt: int, **more: Any) -> None:
    await ws.send(
        json.dumps({"cmd": "report", "event": event, "id": job_id, "attempt": attempt, **more})
    )


async def barrier(ws: ClientConnection) -> None:
    """Wait until the bus has handled every frame ``ws`` sent so far (v2 clients only).

    An unknown cmd always earns an error reply, and the bus answers frames in order, so
    any reply to an earlier frame would arrive first.
    """
    await ws.send('{"cmd": "barrier", "ref": "barrier"}')
    reply = await recv(ws)
    assert reply == {"type": "error", "message": reply["message"], "field": "cmd", "ref": "barrier"}


async def drain_after_close(ws: ClientConnection) -> list[str | bytes]:
    """Close ``ws`` and return every frame it had received but not read."""
    await ws.close()
    return [frame async for frame in ws]


async def test_v1_producer_to_v1_scheduler_byte_for_byte(bus: BusServer) -> None:
    async with client(bus) as scheduler, client(bus) as producer:
        await scheduler.send('{"cmd": "register", "type": "scheduler"}')
        await producer.send('{"cmd": "register", "type": "producer"}')
        await producer.send(V1_JOB)
        # The original wire shape (protocol.encode_v1_payload): runtime first.
        assert await asyncio.wait_for(scheduler.recv(), timeout()) == (
            '{"runtime": 0.5, "priority": 3}'
        )
        await producer.send('{"cmd": "job_request", "payload": {"runtime": 7, "priority": 0}}')
        assert await asyncio.wait_for(scheduler.recv(), timeout()) == (
            '{"runtime": 7, "priority": 0}'
        )
        assert await drain_after_close(producer) == []  # a v1 producer is sent nothing
        assert await drain_after_close(scheduler) == []


async def test_v2_producer_hears_its_job_from_accepted_to_succeeded(bus: BusServer) -> None:
    async with client(bus) as scheduler, client(bus) as producer, client(bus) as monitor:
        s_name = await register(scheduler, "scheduler", name="s1", size=2, tasks=["sleep"])
        assert s_name == "s1"
        assert await register(monitor, "monitor") == "monitor-1"
        assert await register(producer, "producer") == "producer-1"
        await producer.send(
            '{"cmd": "job_request", "ref": 42, "payload": {"priority": 2, "runtime": 0.25}}'
        )
        accepted = await recv(producer)
        assert accepted == {"type": "accepted", "id": accepted["id"], "ref": 42}
        job_id = accepted["id"]
        assert len(job_id) == 32

        assign = await recv(scheduler)
        assert assign == {
            "type": "assign",
            "job": {"id": job_id, "attempt": 1, "priority": 2, "runtime": 0.25},
        }
        await report(scheduler, "started", job_id, 1)
        await report(scheduler, "succeeded", job_id, 1, exit_code=0, wall_s=0.26, cpu_s=0.01)

        for ws in (producer, monitor):
            seen = [await recv(ws) for _ in range(4)]
            assert [(e["type"], e["event"], e["state"]) for e in seen] == [
                ("event", "accepted", "queued"),
                ("event", "assigned", "assigned"),
                ("event", "started", "running"),
                ("event", "succeeded", "succeeded"),
            ]
            assert {e["id"] for e in seen} == {job_id}
            assert [e.get("scheduler") for e in seen] == [None, "s1", "s1", "s1"]
            final = seen[-1]
            assert (final["priority"], final["runtime"], final["attempt"]) == (2, 0.25, 1)
            assert (final["exit_code"], final["wall_s"], final["cpu_s"]) == (0, 0.26, 0.01)
            assert isinstance(final["time"], float)
        assert bus.scheduler_names() == ["s1"] and bus.monitor_count() == 1


async def test_a_monitor_sees_every_job_and_a_producer_only_its_own(bus: BusServer) -> None:
    async with client(bus) as monitor, client(bus) as alice, client(bus) as v1:
        await register(monitor, "monitor")
        await register(alice, "producer", name="alice")
        await v1.send('{"cmd": "register", "type": "producer"}')
        await v1.send(V1_JOB)
        mine = await submit(alice)
        first, second = await recv(monitor), await recv(monitor)
        assert [first["event"], second["event"]] == ["accepted", "accepted"]
        assert second["id"] == mine and first["id"] != mine
        event = await recv(alice)
        assert (event["event"], event["id"]) == ("accepted", mine)
        await barrier(alice)


async def test_names_are_made_unique(bus: BusServer) -> None:
    async with client(bus) as a, client(bus) as b, client(bus) as c:
        assert await register(a, "producer", name="p") == "p"
        assert await register(b, "producer", name="p") == "p-2"
        assert await register(c, "scheduler") == "scheduler-1"


async def test_a_job_submitted_with_no_scheduler_waits_for_one(bus: BusServer) -> None:
    async with client(bus) as producer:
        await register(producer, "producer")
        await producer.send('{"cmd": "job_request", "payload": {"priority": 7, "runtime": 1}}')
        await producer.send('{"cmd": "job_request", "payload": {"priority": 0, "runtime": 1}}')
        frames = [await recv(producer) for _ in range(4)]
        assert [f["type"] for f in frames] == ["accepted", "event", "accepted", "event"]
        urgent_last = [frames[0]["id"], frames[2]["id"]]
        async with client(bus) as scheduler:
            await register(scheduler, "scheduler", name="late")
            got = [(await recv(scheduler))["job"]["id"] for _ in urgent_last]
            assert got == urgent_last[::-1]  # the backlog goes out by priority
            assigned = await recv(producer)
            assert (assigned["event"], assigned["scheduler"]) == ("assigned", "late")


async def test_a_lost_scheduler_s_job_goes_to_another_as_attempt_2(
    bus: BusServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with client(bus) as producer, client(bus) as first:
        await register(producer, "producer")
        await register(first, "scheduler", name="first")
        job_id = await submit(producer)
        assert (await recv(first))["job"]["attempt"] == 1
        async with client(bus) as second:
            await register(second, "scheduler", name="second")
            await first.close()
            assign = (await recv(second))["job"]
            assert (assign["id"], assign["attempt"]) == (job_id, 2)
            events = [await recv(producer) for _ in range(3)]
            assert [(e["event"], e.get("scheduler"), e["attempt"]) for e in events] == [
                ("accepted", None, 1),
                ("assigned", "first", 1),
                ("assigned", "second", 2),
            ]

            # A report about attempt 1 is fenced off: nothing reaches the producer.
            await report(second, "succeeded", job_id, 1)
            await report(second, "started", job_id, 2)
            started = await recv(producer)
            assert (started["event"], started["attempt"]) == ("started", 2)
            assert "stale attempt 1 (current 2)" in caplog.text

            # So is a report about a job held by someone else.
            async with client(bus) as other:
                await register(other, "scheduler", name="other")
                await report(other, "succeeded", job_id, 2)
                await barrier(other)
            assert "job is held by second" in caplog.text
            await report(second, "failed", job_id, 2, error="boom", exit_code=1)
            failed = await recv(producer)
            assert (failed["event"], failed["error"], failed["exit_code"]) == ("failed", "boom", 1)


async def test_evictions_are_counted_and_the_job_stays_assigned(bus: BusServer) -> None:
    async with client(bus) as producer, client(bus) as scheduler:
        await register(producer, "producer")
        await register(scheduler, "scheduler")
        job_id = await submit(producer)
        await recv(scheduler)
        for _ in range(2):
            await report(scheduler, "started", job_id, 1)
            await report(scheduler, "evicted", job_id, 1)
        await scheduler.send('{"cmd": "heartbeat", "running": 0, "queued": 1}')
        await barrier(scheduler)
        events = [await recv(producer) for _ in range(6)]
        assert [(e["event"], e["state"], e.get("evictions", 0)) for e in events[2:]] == [
            ("started", "running", 0),
            ("evicted", "assigned", 1),
            ("started", "running", 1),
            ("evicted", "assigned", 2),
        ]


async def test_tasks_route_jobs_to_schedulers_that_serve_them(bus: BusServer) -> None:
    async with client(bus) as producer, client(bus) as shell, client(bus) as v1:
        await register(producer, "producer")
        await register(shell, "scheduler", tasks=["shell"])
        await v1.send('{"cmd": "register", "type": "scheduler"}')
        shell_job = await submit(producer, task="shell")
        got = (await recv(shell))["job"]
        assert (got["id"], got["task"]) == (shell_job, "shell")
        assert [(await recv(producer))["event"] for _ in range(2)] == ["accepted", "assigned"]
        await submit(producer)  # a sleep job: only the v1 scheduler serves "sleep"
        assert await asyncio.wait_for(v1.recv(), timeout()) == '{"runtime": 0.5, "priority": 3}'


async def test_submit_takes_task_and_timeout(bus: BusServer) -> None:
    async with client(bus) as producer, client(bus) as scheduler:
        await register(producer, "producer")
        await register(scheduler, "scheduler", tasks=["sleep", "shell"])
        frame = {"priority": 1, "runtime": 2, "task": "shell", "timeout": 5}
        await producer.send(json.dumps({"cmd": "job_request", "payload": frame}))
        job = (await recv(scheduler))["job"]
        assert (job["task"], job["timeout"], job["runtime"]) == ("shell", 5.0, 2.0)


GARBAGE = [
    ("this is not json", None, "not valid JSON"),
    ('{"cmd": "job_request", "ref": 7, "payload": {"priority": 11, "runtime": 1}}',
     "payload.priority", "<= 10"),
    ('{"cmd": "job_request", "payload": {"priority": 1, "runtime": -1}}', "payload.runtime", ""),
    ('{"cmd": "make_coffee"}', "cmd", "unknown cmd"),
    ('{"cmd": "job_request", "payload": {"priority": "high", "runtime": 1}}',
     "payload.priority", "Expected `int`"),
    ('{"cmd": "job_request", "payload": {"priority": 1, "runtime": 1, "evil": 1}}',
     "payload", "evil"),
    ('[1, 2, 3]', None, ""),
    ('{"cmd": "report", "event": "started", "id": "x", "attempt": 1}', "cmd", "only a scheduler"),
    ('{"cmd": "register", "type": "producer", "protocol": 2}', "cmd", "already registered"),
]  # fmt: skip


async def test_garbage_gets_errors_naming_the_field_and_the_connection_keeps_working(
    bus: BusServer,
) -> None:
    async with client(bus) as producer:
        await register(producer, "producer")
        for frame, field, text in GARBAGE:
            await producer.send(frame)
            error = await recv(producer)
            assert error["type"] == "error", frame
            assert error.get("field") == field, (frame, error)
            assert text in error["message"], (frame, error)
            if '"ref": 7' in frame:
                assert error["ref"] == 7
        await producer.send(b'{"cmd": "heartbeat"}')
        assert "binary" in (await recv(producer))["message"]
        await submit(producer)  # still usable


async def test_wrong_roles_get_clear_errors(bus: BusServer) -> None:
    async with client(bus) as scheduler, client(bus) as monitor:
        await register(scheduler, "scheduler")
        await register(monitor, "monitor")
        await scheduler.send(V1_JOB)
        error = await recv(scheduler)
        assert error["field"] == "cmd" and "only a producer" in error["message"]
        await monitor.send('{"cmd": "heartbeat"}')
        assert "only a scheduler" in (await recv(monitor))["message"]


async def test_unregistered_and_v1_clients_get_log_lines_not_replies(
    bus: BusServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with client(bus) as stranger, client(bus) as v1, client(bus) as v2_to_be:
        await stranger.send(V1_JOB)
        await v1.send('{"cmd": "register", "type": "producer"}')
        await v1.send('{"cmd": "job_request", "payload": {"priority": 99, "runtime": 1}}')
        # An unregistered client whose frame says protocol 2 gets replies.
        await v2_to_be.send('{"cmd": "register", "type": "producer", "protocol": 2, "size": 0}')
        error = await recv(v2_to_be)
        assert error["field"] == "size"
        await v2_to_be.send('{"cmd": "heartbeat", "protocol": 2, "ref": 1}')
        assert await recv(v2_to_be) == {
            "type": "error",
            "message": "register first",
            "field": "cmd",
            "ref": 1,
        }
        await register(v2_to_be, "producer")
        assert await drain_after_close(stranger) == []
        assert await drain_after_close(v1) == []
    assert "register first" in caplog.text
    assert "producer-1: refused frame: payload.priority" in caplog.text


async def test_a_2_mib_frame_closes_only_its_connection(
    bus: BusServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with client(bus) as producer:
        await register(producer, "producer")
        async with client(bus, max_size=None) as big:
            await register(big, "producer")
            await big.send('{"cmd": "job_request", "ref": "' + "x" * (2 * 1024 * 1024) + '"}')
            await asyncio.wait_for(big.wait_closed(), timeout())
            assert big.close_code == 1009
        await submit(producer)
        async with client(bus) as fresh:
            await register(fresh, "monitor")
    assert "message too big" in caplog.text


@pytest.mark.parametrize("host", ["evil.example", "localhost.evil.example", "127.0.0.1.nip.io"])
async def test_a_foreign_host_header_is_refused(bus: BusServer, host: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://{host}:{bus.port}", host="127.0.0.1", port=bus.port, proxy=None):
            pass
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST"])
async def test_loopback_host_headers_are_accepted(bus: BusServer, host: str) -> None:
    async with connect(
        f"ws://{host}:{bus.port}", host="127.0.0.1", port=bus.port, proxy=None
    ) as ws:
        await register(ws, "monitor")


async def test_an_origin_header_is_refused_unless_allowed() -> None:
    config = BusConfig(port=0, allow_origins=("http://localhost:3000",))
    async with BusServer(config) as bus:
        with pytest.raises(InvalidStatus) as refused:
            async with client(bus, origin="http://evil.example"):
                pass
        assert refused.value.response.status_code == 403
        async with client(bus, origin="http://localhost:3000") as ws:
            await register(ws, "monitor")


async def test_a_token_is_enforced(caplog: pytest.LogCaptureFixture) -> None:
    async with BusServer(BusConfig(port=0, token="s3cret")) as bus:
        async with client(bus) as wrong:
            await wrong.send(
                '{"cmd": "register", "type": "producer", "protocol": 2, "token": "no"}'
            )
            error = await recv(wrong)
            assert (error["type"], error["field"]) == ("error", "token")
            await asyncio.wait_for(wrong.wait_closed(), timeout())
            assert wrong.close_code == 1008
        async with client(bus) as v1:
            await v1.send('{"cmd": "register", "type": "scheduler"}')
            await asyncio.wait_for(v1.wait_closed(), timeout())
            assert v1.close_code == 1008
        assert "v1 cannot send one" in caplog.text
        async with client(bus) as right:
            assert await register(right, "producer", token="s3cret") == "producer-1"
        assert bus.scheduler_names() == []


async def test_a_monitor_that_never_reads_is_dropped_without_slowing_producers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with BusServer(BusConfig(port=0), max_backlog=50) as bus:
        slow = await connect(bus.url, compression=None, proxy=None, max_queue=1)
        try:
            await register(slow, "monitor")
            async with client(bus) as v1, client(bus) as producer, client(bus) as scheduler:
                await register(producer, "producer")
                await register(scheduler, "scheduler")
                await v1.send('{"cmd": "register", "type": "producer"}')
                await v1.send(V1_JOB)
                job_id = (await recv(scheduler))["job"]["id"]
                # Each eviction report with a long error is a ~60 KB event for the monitor.
                bulky = {"error": "x" * 60_000}
                for rounds in range(1000):
                    if bus.monitor_count() == 0:
                        break
                    await report(scheduler, "evicted", job_id, 1, **bulky)
                    if rounds % 10 == 0:  # meanwhile a producer is served as usual
                        await submit(producer, task="unserved")
                        assert (await recv(producer))["event"] == "accepted"
                        await barrier(scheduler)
                assert bus.monitor_count() == 0, "the slow monitor was never dropped"
        finally:
            slow.transport.abort()
            await slow.wait_closed()
    assert "monitor-1: more than 50 frames waiting; disconnecting it" in caplog.text


async def test_a_producer_that_outpaces_its_own_replies_is_slowed_not_dropped() -> None:
    async with BusServer(BusConfig(port=0), max_backlog=50) as bus:
        async with client(bus) as producer:
            await register(producer, "producer")
            jobs = 20_000
            replies: list[str] = []

            async def read_replies() -> None:
                for _ in range(2 * jobs):  # accepted reply + accepted event per job
                    replies.append((await recv(producer))["type"])

            reader = asyncio.create_task(read_replies())
            for _ in range(jobs):
                await producer.send(V1_JOB)
            await asyncio.wait_for(reader, 30 * unit())
            assert replies.count("accepted") == jobs


async def test_a_failing_handler_closes_only_its_connection(
    bus: BusServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Dispatcher, "heartbeat", boom)
    async with client(bus) as producer, client(bus) as scheduler:
        await register(producer, "producer")
        await register(scheduler, "scheduler")
        await submit(producer)
        await recv(scheduler)
        await scheduler.send('{"cmd": "heartbeat"}')
        await asyncio.wait_for(scheduler.wait_closed(), timeout())
        assert scheduler.close_code == 1011
        assert [(await recv(producer))["event"] for _ in range(2)] == ["accepted", "assigned"]
        later = await submit(producer)
        event = await recv(producer)
        assert (event["event"], event["id"]) == ("accepted", later)
        assert bus.scheduler_names() == []
    assert "handler failed" in caplog.text and "RuntimeError: boom" in caplog.text


async def test_close_ends_every_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="scheduler.bus")
    bus = BusServer(BusConfig(port=0))
    await bus.start()
    assert bus.url == f"ws://127.0.0.1:{bus.port}"
    with pytest.raises(RuntimeError, match="already started"):
        await bus.start()
    ws = await connect(bus.url, proxy=None)
    await register(ws, "scheduler")
    await bus.close()
    await bus.close()
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    assert ws.close_code == 1001
    assert "registered as scheduler-1" in caplog.text
    assert "bus closed: 0 jobs accepted" in caplog.text


async def test_serve_forever_stops_when_cancelled() -> None:
    bus = BusServer(BusConfig(port=0))
    await bus.start()
    serving = asyncio.create_task(bus.serve_forever())
    async with client(bus) as ws:
        await register(ws, "monitor")
        serving.cancel()
        await asyncio.wait_for(ws.wait_closed(), timeout())
    with pytest.raises(asyncio.CancelledError):
        await serving
    await bus.close()


def test_url_and_port_before_start() -> None:
    bus = BusServer(BusConfig(host="::1", port=0))
    with pytest.raises(RuntimeError, match="not started"):
        _ = bus.port


async def test_a_non_loopback_host_warns(caplog: pytest.LogCaptureFixture) -> None:
    # A TEST-NET-3 address no machine has: the warning comes before binding fails.
    bus = BusServer(BusConfig(host="203.0.113.7", port=0))
    with pytest.raises(OSError):
        await bus.start()
    assert "'203.0.113.7', which is not loopback" in caplog.text
    assert "no token is set" in caplog.text
