"""A real bus on 127.0.0.1 and an ephemeral port, driven by raw WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import unit, wait_until
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from scheduler.auth import Token, TokenTable
from scheduler.bus.config import BusConfig, bus_rules
from scheduler.bus.journal import Journal, JournalError
from scheduler.bus.server import BusServer
from scheduler.policy.dispatch.dispatcher import Dispatcher

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


async def registered(ws: ClientConnection, role: str, **fields: Any) -> Frame:
    """Register as a v2 ``role``; return the bus's ``registered`` reply."""
    await ws.send(json.dumps({"cmd": "register", "type": role, "protocol": 2, **fields}))
    reply = await recv(ws)
    assert reply["type"] == "registered", reply
    return reply


async def register(ws: ClientConnection, role: str, **fields: Any) -> str:
    """Register as a v2 ``role``; return the name the bus gave."""
    name = (await registered(ws, role, **fields))["name"]
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
        # The original wire shape (codec.encode_v1_payload): runtime first.
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


async def test_a_scheduler_that_closes_cleanly_releases_its_job_to_another_as_attempt_2(
    bus: BusServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with client(bus) as producer, client(bus) as first:
        await register(producer, "producer")
        await register(first, "scheduler", name="first")
        job_id = await submit(producer)
        assert (await recv(first))["job"]["attempt"] == 1
        async with client(bus) as second:
            await register(second, "scheduler", name="second")
            await first.close()  # code 1000: released at once, no lease to wait for
            assign = (await recv(second))["job"]
            assert (assign["id"], assign["attempt"]) == (job_id, 2)
            events = [await recv(producer) for _ in range(4)]
            assert [(e["event"], e.get("scheduler"), e.get("attempt", 0)) for e in events] == [
                ("accepted", None, 0),
                ("assigned", "first", 1),
                ("requeued", "first", 1),
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
            assert failed["errors"] == ["boom"]


async def test_an_evicted_job_is_requeued_and_may_run_elsewhere(bus: BusServer) -> None:
    async with client(bus) as producer, client(bus) as first:
        await register(producer, "producer")
        await register(first, "scheduler", name="first", size=1)
        job_id = await submit(producer)
        await recv(first)
        async with client(bus) as second:
            await register(second, "scheduler", name="second", size=1)
            await report(first, "started", job_id, 1)
            await report(first, "evicted", job_id, 1)
            job = (await recv(second))["job"]
            assert (job["id"], job["attempt"], job["evictions"]) == (job_id, 2, 1)
            events = [await recv(producer) for _ in range(5)]
            assert [(e["event"], e["state"], e.get("evictions", 0)) for e in events[2:]] == [
                ("started", "running", 0),
                ("evicted", "queued", 1),
                ("assigned", "assigned", 1),
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
     "payload.priority", "Expected `int | null`, got `str`"),
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


async def refused_a_wrong_token(bus: BusServer) -> None:
    """Register a producer with a token the bus does not know: it is refused on the field
    ``token`` and the connection closed with 1008."""
    async with client(bus) as wrong:
        await wrong.send('{"cmd": "register", "type": "producer", "protocol": 2, "token": "no"}')
        error = await recv(wrong)
        assert (error["type"], error["field"]) == ("error", "token")
        await asyncio.wait_for(wrong.wait_closed(), timeout())
        assert wrong.close_code == 1008


async def test_a_token_is_enforced(caplog: pytest.LogCaptureFixture) -> None:
    tokens = TokenTable((Token("ops", "admin", "s3cret"),))
    async with BusServer(BusConfig(port=0, tokens=tokens, v1=False)) as bus:
        await refused_a_wrong_token(bus)
        async with client(bus) as v1:
            await v1.send('{"cmd": "register", "type": "scheduler"}')
            await asyncio.wait_for(v1.wait_closed(), timeout())
            assert v1.close_code == 1008
        assert "v1 clients are refused here (--no-v1)" in caplog.text
        async with client(bus) as right:
            assert await register(right, "producer", token="s3cret") == "producer-1"
        assert bus.scheduler_names() == []


async def test_a_monitor_that_never_reads_is_dropped_without_slowing_producers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with BusServer(BusConfig(port=0, max_backlog_bytes=50 * 60_000)) as bus:
        slow = await connect(bus.url, compression=None, proxy=None, max_queue=1)
        try:
            await register(slow, "monitor")
            async with client(bus) as v1, client(bus) as producer, client(bus) as scheduler:
                await register(producer, "producer")
                await register(scheduler, "scheduler")
                await v1.send('{"cmd": "register", "type": "producer"}')
                await v1.send(V1_JOB)
                job_id = (await recv(scheduler))["job"]["id"]
                # Each report with a long error is a ~60 KB event for the monitor.
                bulky = {"error": "x" * 60_000}
                for rounds in range(1000):
                    if bus.monitor_count() == 0:
                        break
                    await report(scheduler, "started", job_id, 1, **bulky)
                    if rounds % 10 == 0:  # meanwhile a producer is served as usual
                        await submit(producer, task="unserved")
                        assert (await recv(producer))["event"] == "accepted"
                        await barrier(scheduler)
                assert bus.monitor_count() == 0, "the slow monitor was never dropped"
        finally:
            slow.transport.abort()
            await slow.wait_closed()
    assert "monitor-1: more than 3000000 bytes waiting; disconnecting it" in caplog.text


async def test_a_producer_that_outpaces_its_own_replies_is_slowed_not_dropped() -> None:
    async with BusServer(BusConfig(port=0, max_backlog_bytes=50 * 60_000)) as bus:
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
    with pytest.raises(ValueError, match="host 203.0.113.7 is not loopback: serve TLS"):
        BusConfig(host="203.0.113.7", port=0)
    bus = BusServer(BusConfig(host="203.0.113.7", port=0, insecure=True))
    with pytest.raises(OSError):
        await bus.start()
    assert "'203.0.113.7', which is not loopback" in caplog.text
    assert "tokens and jobs cross the network in clear, and no tokens are required" in caplog.text


# --- durability: journal, leases, reattach, restart ----------------------------------------


def lease() -> float:
    return 0.5 * unit()


@asynccontextmanager
async def bus_with(**config: Any) -> AsyncIterator[BusServer]:
    """A real bus with ``config`` on 127.0.0.1 and an ephemeral port."""
    async with BusServer(BusConfig(host="127.0.0.1", port=0, **config)) as server:
        yield server


async def request(ws: ClientConnection, frame: Frame) -> Frame:
    """Send ``frame``; return the next frame that is not an event (its reply)."""
    await ws.send(json.dumps(frame))
    while (reply := await recv(ws))["type"] == "event":
        pass
    return reply


async def next_event(ws: ClientConnection, kind: str) -> Frame:
    """Skip frames until an event of ``kind``."""
    while (frame := await recv(ws)).get("event") != kind:
        pass
    return frame


async def beat(ws: ClientConnection) -> None:
    """Heartbeat like a v2 scheduler, a few times per lease, until cancelled."""
    while True:
        await ws.send('{"cmd": "heartbeat"}')
        await asyncio.sleep(lease() / 5)


def committed(db: Path) -> list[tuple[str, str]]:
    """(id, state) of every job committed to the journal file, read as a stranger would."""
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, state FROM jobs ORDER BY seq").fetchall()


def hold_commits(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the journal's commits wait: the first event is set once one is asked for,
    setting the second lets them go."""
    called, release = asyncio.Event(), asyncio.Event()
    real_flush = Journal.flush

    async def held_flush(journal: Journal) -> None:
        called.set()
        await release.wait()
        await real_flush(journal)

    monkeypatch.setattr(Journal, "flush", held_flush)
    return called, release


async def test_a_submit_is_answered_only_once_it_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "bus.db"
    called, release = hold_commits(monkeypatch)
    async with bus_with(db=str(db)) as bus, client(bus) as producer:
        await register(producer, "producer")
        await producer.send(V1_JOB)
        await asyncio.wait_for(called.wait(), timeout())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(producer.recv(), 0.2 * unit())
        assert committed(db) == []
        release.set()
        accepted = await recv(producer)
        assert accepted["type"] == "accepted"
        assert committed(db) == [(accepted["id"], "queued")]


async def test_pipelined_submits_share_commits() -> None:
    async with bus_with() as bus, client(bus) as producer:
        await register(producer, "producer")
        jobs = 400
        for _ in range(jobs):
            await producer.send(V1_JOB)
        frames = [await recv(producer) for _ in range(2 * jobs)]
        assert sum(f["type"] == "accepted" for f in frames) == jobs
        assert 1 <= bus.journal.commits <= jobs // 4


async def test_a_restarted_bus_keeps_queued_jobs_and_a_scheduler_reattaches(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "bus.db")
    async with bus_with(db=db, rules=bus_rules(lease=2 * unit())) as bus:
        async with client(bus) as producer, client(bus) as s1, client(bus) as v1:
            await register(producer, "producer")
            secret = (await registered(s1, "scheduler", name="s1", size=1))["secret"]
            held_id = await submit(producer)
            assert (await recv(s1))["job"]["attempt"] == 1
            await report(s1, "started", held_id, 1)
            waiting = [
                (await request(producer, {"cmd": "job_request", "payload": {
                    "priority": 1, "runtime": 1, "task": "render"}}))["id"]
                for _ in range(2)
            ]  # fmt: skip
            await v1.send('{"cmd": "register", "type": "producer"}')
            await v1.send('{"cmd": "job_request", "payload": {"priority": 9, "runtime": 1}}')
            await wait_until(lambda: len(bus.journal.load()) == 4, timeout(), "4 jobs journaled")
            await bus.close()  # while s1 still holds its job, as if the bus had crashed
    async with bus_with(db=db, rules=bus_rules(lease=2 * unit())) as bus:
        async with client(bus) as s1, client(bus) as watcher:
            await register(watcher, "producer")
            watching = await request(watcher, {"cmd": "watch", "ids": [held_id, *waiting, "no"]})
            assert [(e["id"], e["event"], e["state"]) for e in watching["jobs"]] == [
                (held_id, "started", "running"),
                (waiting[0], "accepted", "queued"),
                (waiting[1], "accepted", "queued"),
            ]
            assert watching["unknown"] == ["no"]
            held = [{"id": held_id, "attempt": 1}]
            await s1.send(json.dumps({"cmd": "register", "type": "scheduler", "protocol": 2,
                                      "name": "s1", "size": 1, "held": held,
                                      "secret": secret}))  # fmt: skip
            assert (await recv(s1))["type"] == "registered"
            # s1 also held the v1 producer's job but did not list it: requeued at once.
            v1_job = (await recv(s1))["job"]
            assert (v1_job["priority"], v1_job["attempt"]) == (9, 2)
            await report(s1, "succeeded", held_id, 1)  # from its outbox
            done = await recv(watcher)
            assert (done["event"], done["id"], done["attempt"]) == ("succeeded", held_id, 1)
            async with client(bus) as renderer:
                await register(renderer, "scheduler", tasks=["render"])
                got = [(await recv(renderer))["job"] for _ in waiting]
                assert [(j["id"], j["attempt"]) for j in got] == [(i, 1) for i in waiting]


async def test_a_silent_scheduler_loses_its_jobs_and_is_told_to_stop_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="scheduler.bus")
    async with (
        bus_with(rules=bus_rules(lease=lease())) as bus,
        client(bus) as producer,
        client(bus) as silent,
    ):
        await register(producer, "producer")
        await silent.send(json.dumps({"cmd": "register", "type": "scheduler", "protocol": 2,
                                      "name": "silent"}))  # fmt: skip
        reply = await recv(silent)
        assert len(reply.pop("secret")) == 64
        assert reply == {"type": "registered", "name": "silent", "protocol": 2,
                         "lease_s": lease(), "batch": True}  # fmt: skip
        job_id = await submit(producer)
        assert (await recv(silent))["job"]["attempt"] == 1
        async with client(bus) as alive:
            await register(alive, "scheduler", name="alive")
            beating = asyncio.create_task(beat(alive))
            try:
                job = (await recv(alive))["job"]
                assert (job["id"], job["attempt"]) == (job_id, 2)
                await asyncio.wait_for(silent.wait_closed(), timeout())
                assert (silent.close_code, silent.close_reason) == (4000, "lease expired")
                assert "silent: lease expired; 1 jobs taken back" in caplog.text
                requeued = await next_event(producer, "requeued")
                assert (requeued["scheduler"], requeued["attempt"]) == ("silent", 1)
                async with client(bus) as back:  # it comes back, still running attempt 1
                    held = [{"id": job_id, "attempt": 1}]
                    await register(back, "scheduler", name="silent", held=held)
                    assert await recv(back) == {
                        "type": "stop",
                        "id": job_id,
                        "attempt": 1,
                        "reason": "the job was reassigned to alive",
                        "kind": "drop",
                    }
                    await report(back, "succeeded", job_id, 1)
                    await barrier(back)
                assert "ignored report about job" in caplog.text
                assert "job is held by alive" in caplog.text
            finally:
                beating.cancel()


async def test_a_broken_connection_keeps_its_jobs_within_the_lease() -> None:
    async with bus_with(rules=bus_rules(lease=10 * unit())) as bus, client(bus) as producer:
        await register(producer, "producer")
        first = await connect(bus.url, compression=None, proxy=None)
        secret = (await registered(first, "scheduler", name="s1"))["secret"]
        job_id = await submit(producer)
        await recv(first)
        first.transport.abort()  # no close frame: the scheduler may come back
        await first.wait_closed()
        await wait_until(lambda: bus.scheduler_names() == [], timeout(), "s1 leaves")
        async with client(bus) as again, client(bus) as newer:
            held = [{"id": job_id, "attempt": 1}]
            await register(again, "scheduler", name="s1", held=held, secret=secret)
            # A newer connection of the same scheduler (it knows the secret) replaces it.
            await register(newer, "scheduler", name="s1", held=held, secret=secret)
            await asyncio.wait_for(again.wait_closed(), timeout())
            assert again.close_code == 4001
            assert bus.scheduler_names() == ["s1"]
            await report(newer, "succeeded", job_id, 1)
            events = [await recv(producer) for _ in range(3)]
            assert [(e["event"], e.get("attempt", 0)) for e in events] == [
                ("accepted", 0),
                ("assigned", 1),
                ("succeeded", 1),
            ]


async def test_cancel_a_queued_a_running_a_final_and_an_unknown_job() -> None:
    async with bus_with() as bus, client(bus) as producer:
        await register(producer, "producer")
        queued = await submit(producer, task="render")
        reply = await request(producer, {"cmd": "cancel", "id": queued, "ref": 1})
        assert reply == {"type": "cancel_reply", "id": queued, "state": "cancelled",
                         "message": "cancelled", "ref": 1}  # fmt: skip
        assert (await next_event(producer, "cancelled"))["id"] == queued
        async with client(bus) as scheduler:
            await register(scheduler, "scheduler")
            running = (await request(producer, {"cmd": "job_request", "payload": {
                "priority": 1, "runtime": 9}}))["id"]  # fmt: skip
            await recv(scheduler)
            await report(scheduler, "started", running, 1)
            reply = await request(producer, {"cmd": "cancel", "id": running})
            assert (reply["state"], reply["message"]) == ("running", "stopping")
            assert await recv(scheduler) == {
                "type": "stop",
                "id": running,
                "attempt": 1,
                "reason": "cancelled",
                "kind": "cancel",
            }
            await report(scheduler, "cancelled", running, 1)
            cancelled = await next_event(producer, "cancelled")
            assert (cancelled["id"], cancelled["state"]) == (running, "cancelled")
        reply = await request(producer, {"cmd": "cancel", "id": running})
        assert reply["state"] == "cancelled" and "nothing was done" in reply["message"]
        reply = await request(producer, {"cmd": "cancel", "id": "nope", "ref": "x"})
        assert reply == {"type": "error", "message": "id: no job nope", "field": "id", "ref": "x"}


async def test_one_job_id_submitted_concurrently_by_three_producers_makes_one_job() -> None:
    owners = ("alice", "bob", "carol")
    tokens = TokenTable(
        (*(Token(name, "producer", f"t-{name}") for name in owners), Token("s", "scheduler", "ts"))
    )
    async with bus_with(tokens=tokens) as bus, client(bus) as scheduler:
        await register(scheduler, "scheduler", token="ts")
        producers = [await connect(bus.url, compression=None, proxy=None) for _ in owners]
        try:
            for ws, name in zip(producers, owners, strict=True):
                await register(ws, "producer", token=f"t-{name}")
            frame: Frame = {"cmd": "job_request", "payload": {"priority": 1, "runtime": 1,
                                                        "job_id": "report-1"}}  # fmt: skip
            replies = await asyncio.gather(*(request(ws, frame) for ws in producers))
            winner = producers[[r["type"] for r in replies].index("accepted")]
            # The winner re-sends its submission (its reply was lost): it gets its job.
            assert await request(winner, frame) == {"type": "accepted", "id": "report-1",
                                                    "existing": True}  # fmt: skip
        finally:
            for ws in producers:
                await ws.close()
        assert sorted(r["type"] for r in replies) == ["accepted", "error", "error"]
        for error in (r for r in replies if r["type"] == "error"):
            assert error["field"] == "payload.job_id"
            assert error["message"] == (
                "payload.job_id: job id report-1 is taken by another submitter; choose another id"
            )
        assert (await recv(scheduler))["job"]["id"] == "report-1"
        await report(scheduler, "succeeded", "report-1", 1)
        async with client(bus) as late:
            await register(late, "producer", token="t-bob")
            for how in ("ignore", "replace"):  # never act on another owner's job
                frame["payload"]["on_conflict"] = how
                error = await request(late, frame)
                assert "taken by another submitter" in error["message"]


async def test_a_batch_with_one_bad_job_gets_one_error_and_the_rest_runs() -> None:
    async with bus_with() as bus, client(bus) as producer, client(bus) as scheduler:
        await register(producer, "producer")
        await register(scheduler, "scheduler", size=10)
        jobs = [{"priority": 1, "runtime": 1}, {"priority": 99, "runtime": 1},
                {"priority": 2, "runtime": 1, "job_id": "mine"}]  # fmt: skip
        reply = await request(producer, {"cmd": "submit_many", "jobs": jobs, "ref": 5})
        assert reply["type"] == "submitted_many" and reply["ref"] == 5
        first, bad, mine = reply["results"]
        assert set(first) == {"id"} and mine == {"id": "mine"}
        assert bad["field"] == "jobs.1.priority" and bad["error"].startswith("jobs.1.priority: ")
        got = [(await recv(scheduler))["job"]["id"] for _ in range(2)]
        assert got == [first["id"], "mine"]
        error = (await request(producer, {"cmd": "submit_many", "jobs": [1]}))["results"][0]
        assert error == {"error": "jobs.0: Expected `object`, got `int`", "field": "jobs.0"}
        assert bus.journal.commits >= 1


async def test_a_batch_of_like_jobs_gets_one_job_each_and_one_error_each() -> None:
    async with bus_with() as bus, client(bus) as producer:
        await register(producer, "producer")
        good, bad = {"priority": 1, "runtime": 1}, {"priority": 99, "runtime": 1}
        jobs = [good, good, bad, bad, good]
        reply = await request(producer, {"cmd": "submit_many", "jobs": jobs, "ref": 1})
        results = reply["results"]
        ids = [results[i]["id"] for i in (0, 1, 4)]
        assert len(set(ids)) == 3
        assert [results[i]["field"] for i in (2, 3)] == ["jobs.2.priority", "jobs.3.priority"]
        watching = await request(producer, {"cmd": "watch", "ids": ids})
        assert [e["state"] for e in watching["jobs"]] == ["queued"] * 3


async def test_vacuum_deletes_final_jobs_and_watch_then_knows_them_not() -> None:
    async with bus_with(retention={"failed": 0.0}) as bus, client(bus) as producer:
        await register(producer, "producer")
        async with client(bus) as scheduler:
            await register(scheduler, "scheduler")
            job = {"cmd": "job_request", "payload": {"priority": 1, "runtime": 1}}
            ids = [(await request(producer, job))["id"] for _ in range(2)]
            for _ in ids:
                await recv(scheduler)
            await report(scheduler, "succeeded", ids[0], 1)
            await report(scheduler, "failed", ids[1], 1)
            await next_event(producer, "failed")
        watching = await request(producer, {"cmd": "watch", "ids": ids})
        assert [e["state"] for e in watching["jobs"]] == ["succeeded", "failed"]
        await wait_until(lambda: bus.journal.counts() == {"succeeded": 1, "failed": 1},
                         timeout(), "both committed")  # fmt: skip
        assert await request(producer, {"cmd": "vacuum", "ref": 1}) == {
            "type": "vacuumed",
            "deleted": {"failed": 1},
            "ref": 1,
        }
        reply = await request(producer, {"cmd": "vacuum", "older_than_s": 0})
        assert reply["deleted"] == {"succeeded": 1}
        watching = await request(producer, {"cmd": "watch", "ids": ids})
        assert watching == {"type": "watching", "jobs": [], "unknown": ids}


async def test_a_retrying_job_runs_again_with_its_errors() -> None:
    async with bus_with() as bus, client(bus) as producer, client(bus) as scheduler:
        await register(producer, "producer")
        await register(scheduler, "scheduler")
        job_id = await submit(producer, max_retries=1, retry_backoff=0)
        await recv(scheduler)
        await report(scheduler, "timed_out", job_id, 1)
        retrying = await next_event(producer, "retrying")
        assert (retrying["state"], retrying["errors"], retrying["retry_in_s"]) == (
            "queued",
            ["timed out"],
            0.0,
        )
        assert (await recv(scheduler))["job"]["attempt"] == 2


async def test_v2_only_commands_are_refused_to_v1_clients_and_watch_to_schedulers(
    bus: BusServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with client(bus) as v1, client(bus) as scheduler:
        await v1.send('{"cmd": "register", "type": "producer"}')
        await v1.send('{"cmd": "cancel", "id": "x"}')
        await register(scheduler, "scheduler")
        error = await request(scheduler, {"cmd": "watch", "ids": []})
        assert "only a producer or monitor may" in error["message"]
        assert await drain_after_close(v1) == []
    assert "this cmd needs protocol 2" in caplog.text


async def submit_skipping_events(ws: ClientConnection, **payload: Any) -> str:
    """Submit a job (runtime 0.5 s unless given); return its id, skipping earlier events."""
    reply = await request(ws, {"cmd": "job_request", "payload": {"runtime": 0.5, **payload}})
    assert reply["type"] == "accepted", reply
    job_id = reply["id"]
    assert isinstance(job_id, str)
    return job_id


async def test_stats_are_served_with_every_scheduler(bus: BusServer) -> None:
    async with client(bus) as monitor, client(bus) as scheduler, client(bus) as producer:
        await register(monitor, "monitor")
        await register(scheduler, "scheduler", name="s1", size=2, tasks=["sleep"])
        await register(producer, "producer")
        job_id = await submit_skipping_events(producer, priority=4)
        await submit_skipping_events(producer, priority=1, task="render")
        await recv(scheduler)
        await report(scheduler, "started", job_id, 1)
        await scheduler.send('{"cmd": "heartbeat", "running": 1, "queued": 0}')
        await barrier(scheduler)
        reply = await request(monitor, {"cmd": "stats", "ref": 4})
    assert (reply["type"], reply["ref"]) == ("stats", 4)
    stats = reply["bus"]
    assert (stats["submitted"], stats["started"], stats["running"], stats["queued"]) == (
        2,
        1,
        1,
        1,
    )
    assert stats["unserved"] == {"render": 1} and stats["uptime_s"] >= 0
    assert stats["wait_s"]["4"]["count"] == 1
    (s1,) = reply["schedulers"]
    assert (s1["name"], s1["protocol"], s1["size"], s1["busy"], s1["queued"]) == (
        "s1",
        2,
        2,
        1,
        0,
    )
    assert (s1["running_priorities"], s1["started"], s1["tasks"]) == ([4], 1, ["sleep"])
    assert 0 <= s1["heartbeat_age_s"] < timeout()


async def test_an_idle_scheduler_steals_a_waiting_job_through_the_bus(bus: BusServer) -> None:
    async with client(bus) as producer, client(bus) as busy:
        await register(producer, "producer")
        await register(busy, "scheduler", name="busy", size=1)
        ids = [await submit_skipping_events(producer, priority=p) for p in (0, 7, 3)]
        assert [(await recv(busy))["job"]["id"] for _ in ids] == ids
        await report(busy, "started", ids[0], 1)
        async with client(bus) as idle:
            await register(idle, "scheduler", name="idle", size=1)
            stop = await recv(busy)
            assert stop == {
                "type": "stop",
                "id": ids[2],
                "attempt": 1,
                "reason": "stolen",
                "kind": "steal",
            }
            await report(busy, "revoked", ids[2], 1)
            job = (await recv(idle))["job"]
            assert (job["id"], job["attempt"], job["priority"]) == (ids[2], 2, 3)
            assigned = await next_event(producer, "assigned")
            while (assigned["id"], assigned["scheduler"]) != (ids[2], "idle"):
                assigned = await next_event(producer, "assigned")
            await report(idle, "started", ids[2], 2)
            await barrier(idle)
            stats = (await request(producer, {"cmd": "stats"}))["bus"]
    assert (stats["stolen"], stats["steal_attempts"]) == (1, 1)


async def test_a_sleep_job_without_runtime_is_refused_a_v1_one_logged(
    bus: BusServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with client(bus) as producer, client(bus) as v1:
        await register(producer, "producer")
        reply = await request(producer, {"cmd": "job_request", "payload": {"priority": 2}})
        assert reply["type"] == "error" and reply["field"] == "payload.runtime"
        assert "> 0 for the sleep task" in reply["message"]
        await v1.send('{"cmd": "register", "type": "producer"}')
        await v1.send('{"cmd": "job_request", "payload": {"priority": 2}}')
        await wait_until(lambda: "refused job" in caplog.text, timeout(), "a log line")
        assert "payload.runtime" in caplog.text
        assert await drain_after_close(v1) == []


async def test_a_big_batch_does_not_get_its_own_producer_dropped() -> None:
    async with BusServer(BusConfig(port=0, max_backlog_bytes=50 * 60_000)) as bus:
        async with client(bus) as producer, client(bus) as scheduler:
            await register(producer, "producer")
            await register(scheduler, "scheduler", size=1000)
            jobs = [{"priority": 5, "runtime": 1}] * 2000
            await producer.send(json.dumps({"cmd": "submit_many", "jobs": jobs}))
            frames = [await recv(producer) for _ in range(1 + 2 * len(jobs))]
            assert frames[0]["type"] == "submitted_many"
            assert {f.get("event") for f in frames[1:]} == {"accepted", "assigned"}
            assert len([await recv(scheduler) for _ in jobs]) == len(jobs)


async def test_vacuum_runs_periodically_and_a_failing_one_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scheduler.bus")
    async with bus_with(vacuum_every=0.05 * unit()) as bus, client(bus) as producer:
        await register(producer, "producer")
        await wait_until(lambda: "vacuum: deleted 0 final jobs" in caplog.text, timeout(), "vac")

        def broken(*args: object) -> dict[str, int]:
            raise JournalError("disk on fire")

        monkeypatch.setattr(Journal, "vacuum", broken)
        await wait_until(lambda: "periodic vacuum failed" in caplog.text, timeout(), "failure")
        reply = await request(producer, {"cmd": "vacuum", "ref": 2})
        assert reply == {"type": "error", "message": "vacuum failed: disk on fire", "ref": 2}


@pytest.mark.parametrize(
    ("config", "blamed"),
    [
        ({"rules": {"lease": 0}}, "lease"),
        ({"rules": {"max_deliveries": 0}}, "max_deliveries"),
        ({"vacuum_every": 0}, "vacuum_every"),
        ({"retention": {"queued": 1.0}}, "not final states: queued"),
        ({"retention": {"failed": -1.0}}, "retention"),
        ({"retention_default": -1.0}, "retention"),
        ({"rules": {"steal": "random"}}, "steal"),
        ({"rules": {"age_every": 0.0}}, "age_every"),
    ],
)
def test_bad_bus_configs_are_refused(config: dict[str, Any], blamed: str) -> None:
    fields = dict(config)
    rules = fields.pop("rules", {})
    with pytest.raises(ValueError, match=blamed):
        BusConfig(rules=bus_rules(**rules), **fields)
