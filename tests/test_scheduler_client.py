"""The scheduler client against a minimal in-test bus that speaks raw frames."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import psutil
import pytest
from conftest import unit, wait_until
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import InvalidURI

from scheduler.protocol import Assignment, Report
from scheduler.scheduler_client import SchedulerClient, SchedulerConfig
from scheduler.tasks import TaskRegistry

Frame = dict[str, Any]


class Peer:
    """One scheduler connection as the fake bus sees it."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()

    async def expect(self, cmd: str, timeout: float = 5.0, **fields: object) -> Frame:
        """The next frame with this ``cmd`` and these field values; others are skipped."""
        async with asyncio.timeout(timeout * unit()):
            while True:
                frame = await self.frames.get()
                if frame["cmd"] == cmd and all(frame.get(k) == v for k, v in fields.items()):
                    return frame

    async def send(self, frame: Frame | str) -> None:
        """Send a frame: a dict as JSON, a string as is."""
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def register(self, name: str = "sched-1") -> Frame:
        """Take the register frame and confirm it as the bus would."""
        register = await self.expect("register")
        await self.send({"type": "registered", "name": name, "protocol": 2})
        return register

    async def assign(self, job_id: str, attempt: int = 1, **job: object) -> None:
        """Assign a job; ``runtime`` defaults to 0.05 test units."""
        body = {"id": job_id, "attempt": attempt, "priority": 5, "runtime": 0.05 * unit()}
        await self.send({"type": "assign", "job": body | job})


class FakeBus:
    """A websockets server on 127.0.0.1 that hands each connection to the test."""

    def __init__(self) -> None:
        self.peers: asyncio.Queue[Peer] = asyncio.Queue()
        self.port = 0

    async def handler(self, ws: ServerConnection) -> None:
        peer = Peer(ws)
        self.peers.put_nowait(peer)
        async for frame in ws:
            peer.frames.put_nowait(json.loads(frame))

    async def peer(self, timeout: float = 5.0) -> Peer:
        """The next scheduler connection."""
        return await asyncio.wait_for(self.peers.get(), timeout * unit())

    def serve(self, port: int = 0) -> AbstractAsyncContextManager[Server]:
        """The server, as an async context manager."""
        return serve(self.handler, "127.0.0.1", port)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


def port_of(server: Server) -> int:
    return int(next(iter(server.sockets)).getsockname()[1])


@pytest.fixture
async def fake_bus() -> AsyncIterator[FakeBus]:
    fake = FakeBus()
    async with fake.serve() as server:
        fake.port = port_of(server)
        yield fake


Seen = list[tuple[Report, Assignment]]
Starter = Callable[..., SchedulerClient]


@pytest.fixture
async def start_client() -> AsyncIterator[Starter]:
    """Starts clients running in this loop; each is stopped and awaited at the end."""
    running: list[tuple[SchedulerClient, asyncio.Task[None]]] = []

    def start(url: str, seen: Seen | None = None, **config: Any) -> SchedulerClient:
        on_report = None if seen is None else lambda r, a: seen.append((r, a))
        client = SchedulerClient(
            SchedulerConfig(bus_url=url, **config),
            TaskRegistry(),
            on_report=on_report,
        )
        running.append((client, asyncio.create_task(client.run())))
        return client

    yield start
    for client, task in running:
        client.stop()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10 * unit())


def job_processes() -> list[psutil.Process]:
    """Live processes below this test process."""
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


async def test_registers_v2_with_its_name_token_size_and_tasks(
    fake_bus: FakeBus, start_client: Starter
) -> None:
    client = start_client(fake_bus.url, name="alpha", token="s3cret", size=3)
    peer = await fake_bus.peer()
    register = await peer.register("alpha-2")
    assert register == {
        "cmd": "register",
        "type": "scheduler",
        "protocol": 2,
        "name": "alpha",
        "token": "s3cret",
        "size": 3,
        "tasks": ["sleep"],
    }
    await wait_until(lambda: client.name == "alpha-2", 5 * unit(), "the confirmed name")


async def test_assigned_job_is_reported_started_and_succeeded(
    fake_bus: FakeBus, start_client: Starter
) -> None:
    seen: Seen = []
    start_client(fake_bus.url, seen)
    peer = await fake_bus.peer()
    await peer.register()
    await peer.assign("j1", attempt=4, priority=2)
    assert await peer.expect("report", event="started") == {
        "cmd": "report",
        "event": "started",
        "id": "j1",
        "attempt": 4,
    }
    done = await peer.expect("report", event="succeeded")
    assert (done["id"], done["attempt"], done["exit_code"]) == ("j1", 4, 0)
    assert done["wall_s"] >= 0.05 * unit() and done["max_rss_kb"] > 0
    assert [(r.event, a.priority) for r, a in seen] == [("started", 2), ("succeeded", 2)]


async def test_unknown_task_is_reported_failed(fake_bus: FakeBus, start_client: Starter) -> None:
    start_client(fake_bus.url)
    peer = await fake_bus.peer()
    await peer.register()
    await peer.assign("j1", task="format_disk")
    failed = await peer.expect("report", event="failed")
    assert "unknown task 'format_disk'" in failed["error"]


async def test_stale_attempt_does_not_replace_the_held_one(
    fake_bus: FakeBus, start_client: Starter
) -> None:
    seen: Seen = []
    start_client(fake_bus.url, seen)
    peer = await fake_bus.peer()
    await peer.register()
    await peer.assign("j1", attempt=2, priority=1)
    await peer.assign("j1", attempt=1, priority=9)
    await peer.expect("report", event="succeeded")
    assert [(r.attempt, a.attempt, a.priority) for r, a in seen] == [(2, 2, 1), (2, 2, 1)]


async def test_heartbeats_carry_the_load(fake_bus: FakeBus, start_client: Starter) -> None:
    start_client(fake_bus.url, size=1, heartbeat_s=0.05 * unit())
    peer = await fake_bus.peer()
    await peer.register()
    await peer.expect("heartbeat", running=0, queued=0)
    await peer.assign("long", runtime=60)
    await peer.assign("waiting", runtime=60)
    await peer.expect("heartbeat", running=1, queued=1)


async def test_lost_connection_stops_jobs_and_reconnects(
    fake_bus: FakeBus, start_client: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    start_client(fake_bus.url)
    peer = await fake_bus.peer()
    await peer.register()
    await peer.assign("long", runtime=60)
    await peer.expect("report", event="started")
    [job] = job_processes()
    await peer.ws.close()
    await wait_until(lambda: not job.is_running(), 5 * unit(), "the job to be stopped")
    again = await fake_bus.peer()
    await again.register("sched-1")
    assert "lost the bus" in caplog.text
    await again.assign("long", attempt=2)
    done = await again.expect("report", event="succeeded")
    assert done["attempt"] == 2


async def test_bad_frames_from_the_bus_are_logged_not_fatal(
    fake_bus: FakeBus, start_client: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "scheduler.scheduler_client")
    start_client(fake_bus.url)
    peer = await fake_bus.peer()
    await peer.register()
    await peer.send("not json")
    await peer.send({"type": "assign", "job": {"id": "j0", "attempt": 1}})
    await peer.send({"type": "error", "message": "heartbeat: bad"})
    await peer.send({"type": "accepted", "id": "x"})
    await peer.assign("j1")
    await peer.expect("report", event="succeeded", id="j1")
    assert "ignoring a bad frame from the bus: not valid JSON" in caplog.text
    assert "ignoring a bad frame from the bus: job: Object missing required field" in caplog.text
    assert "the bus refused a frame: heartbeat: bad" in caplog.text
    assert "ignoring Accepted from the bus" in caplog.text


async def test_retries_while_the_bus_is_down_then_connects(
    start_client: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = start_client(f"ws://127.0.0.1:{port}")
    await wait_until(
        lambda: caplog.text.count("cannot reach the bus") >= 2, 5 * unit(), "two failed tries"
    )
    fake = FakeBus()
    async with fake.serve(port):
        peer = await fake.peer(timeout=10)
        await peer.register()
        await wait_until(lambda: client.name == "sched-1", 5 * unit(), "registration")


async def test_host_names_are_resolved_without_threads(
    fake_bus: FakeBus, start_client: Starter
) -> None:
    # "localhost" may resolve to ::1 first, where nothing listens: the next address is tried.
    client = start_client(f"ws://localhost:{fake_bus.port}")
    peer = await fake_bus.peer()
    await peer.register()
    await wait_until(lambda: client.name is not None, 5 * unit(), "registration")
    assert threading.active_count() == 1, threading.enumerate()


async def test_stop_ends_run_stops_jobs_and_closes_the_socket(fake_bus: FakeBus) -> None:
    client = SchedulerClient(SchedulerConfig(bus_url=fake_bus.url))
    task = asyncio.create_task(client.run())
    peer = await fake_bus.peer()
    await peer.register()
    await peer.assign("long", runtime=60)
    await peer.expect("report", event="started")
    assert len(job_processes()) == 1
    client.stop()
    await asyncio.wait_for(task, 5 * unit())
    assert job_processes() == []
    await asyncio.wait_for(peer.ws.wait_closed(), 5 * unit())


@pytest.mark.parametrize(
    ("field", "value"),
    [("size", 0), ("size", 4097), ("timeout", 0.0), ("heartbeat_s", -1.0), ("grace", -0.1)],
)
def test_config_refuses_bad_values(field: str, value: float) -> None:
    settings: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=field):
        SchedulerConfig(**settings)


async def test_bad_url_is_refused_at_once() -> None:
    with pytest.raises(InvalidURI):
        await SchedulerClient(SchedulerConfig(bus_url="http://localhost")).run()


async def test_stop_before_run_returns_at_once() -> None:
    client = SchedulerClient(SchedulerConfig(bus_url="ws://127.0.0.1:9"))
    client.stop()
    await asyncio.wait_for(client.run(), 5 * unit())


async def test_error_in_a_session_stops_its_jobs_and_propagates(fake_bus: FakeBus) -> None:
    def explode(report: Report, assignment: Assignment) -> None:
        if report.event == "evicted":
            raise RuntimeError("observer broke")

    client = SchedulerClient(SchedulerConfig(bus_url=fake_bus.url, size=1), on_report=explode)
    task = asyncio.create_task(client.run())
    peer = await fake_bus.peer()
    await peer.register()
    await peer.assign("low", runtime=60, priority=9)
    await peer.expect("report", event="started")
    await peer.assign("urgent", runtime=60, priority=0)
    with pytest.raises(RuntimeError, match="observer broke"):
        await asyncio.wait_for(task, 5 * unit())
    assert job_processes() == []
