"""The scheduler client against a minimal in-test bus that speaks raw frames: registering,
running jobs, keeping them through a lost connection, the bus's stops, clean shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from http import HTTPStatus
from typing import Any

import psutil
import pytest
from conftest import is_fork_server, unit, wait_until
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosedError, InvalidURI
from websockets.http11 import Request, Response

from scheduler.codec import encode
from scheduler.policy.warm import WarmLimits
from scheduler.protocol import Assignment, Held, Register, Report
from scheduler.protocol_types import MAX_FRAME_BYTES
from scheduler.tasks import TaskRegistry
from scheduler.worker.client import SchedulerClient, SchedulerConfig
from scheduler.worker.report_queue import ReportQueue, fit_register

Frame = dict[str, Any]


class Peer:
    """One scheduler connection as the fake bus sees it."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self.log: list[Frame] = []
        """Every frame received, in order."""
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.alive_at_close: list[psutil.Process] = []
        """The job processes that were alive when the connection closed."""

    async def expect(self, cmd: str, timeout: float = 5.0, **fields: object) -> Frame:
        """The next frame with this ``cmd`` and these field values; others are skipped."""
        async with asyncio.timeout(timeout * unit()):
            while True:
                frame = await self.frames.get()
                if frame["cmd"] == cmd and all(frame.get(k) == v for k, v in fields.items()):
                    return frame

    async def next(self, timeout: float = 5.0) -> Frame:
        """The next frame, whatever it is."""
        return await asyncio.wait_for(self.frames.get(), timeout * unit())

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
        await self.send(assign_frame(job_id, attempt, **job))

    async def stop(self, job_id: str, attempt: int, reason: str, kind: str = "drop") -> None:
        """Tell the scheduler to stop an attempt."""
        stop = {"type": "stop", "id": job_id, "attempt": attempt, "reason": reason, "kind": kind}
        await self.send(stop)

    def reports(self, job_id: str) -> list[str]:
        """The events reported so far about ``job_id``."""
        return [f["event"] for f in self.log if f["cmd"] == "report" and f["id"] == job_id]


def assign_frame(job_id: str, attempt: int = 1, **job: object) -> str:
    """An ``assign`` frame; ``runtime`` defaults to 0.05 test units."""
    body = {"id": job_id, "attempt": attempt, "priority": 5, "runtime": 0.05 * unit()}
    return json.dumps({"type": "assign", "job": body | job})


class FakeBus:
    """A websockets server on 127.0.0.1 that hands each connection to the test.

    While ``refusing`` is set it answers every handshake with 503, as a bus that is down.
    """

    def __init__(self) -> None:
        self.peers: asyncio.Queue[Peer] = asyncio.Queue()
        self.port = 0
        self.refusing = False

    async def handler(self, ws: ServerConnection) -> None:
        peer = Peer(ws)
        self.peers.put_nowait(peer)
        try:
            async for frame in ws:
                peer.log.append(json.loads(frame))
                peer.frames.put_nowait(peer.log[-1])
        except ConnectionClosedError:
            pass
        peer.alive_at_close = job_processes()
        peer.close_code = ws.close_code
        peer.closed.set()

    def check(self, ws: ServerConnection, request: Request) -> Response | None:
        """Refuse the handshake while ``refusing``."""
        if self.refusing:
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "down\n")
        return None

    async def peer(self, timeout: float = 5.0) -> Peer:
        """The next scheduler connection."""
        return await asyncio.wait_for(self.peers.get(), timeout * unit())

    def serve(self, port: int = 0) -> AbstractAsyncContextManager[Server]:
        """The server, as an async context manager."""
        return serve(self.handler, "127.0.0.1", port, process_request=self.check)

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
    """Starts clients running in this loop (serving ``tasks``, if given); each is stopped
    and awaited at the end."""
    running: list[tuple[SchedulerClient, asyncio.Task[None]]] = []

    def start(
        url: str, seen: Seen | None = None, tasks: TaskRegistry | None = None, **config: Any
    ) -> SchedulerClient:
        on_report = None if seen is None else lambda r, a: seen.append((r, a))
        client = SchedulerClient(
            SchedulerConfig(bus_url=url, **config),
            TaskRegistry() if tasks is None else tasks,
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
            if child.status() != psutil.STATUS_ZOMBIE and not is_fork_server(child):
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
        "batch": True,
        "hold": True,
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


async def test_the_observer_sees_each_report_once_it_is_sent(
    fake_bus: FakeBus, start_client: Starter
) -> None:
    waiting: list[int] = []

    def observe(report: Report, assignment: Assignment) -> None:
        waiting.append(len(client.outbox))

    client = SchedulerClient(SchedulerConfig(bus_url=fake_bus.url), on_report=observe)
    task = asyncio.create_task(client.run())
    try:
        peer = await fake_bus.peer()
        await peer.register()
        await peer.assign("j1")
        await peer.expect("report", event="succeeded")
        await wait_until(lambda: len(waiting) == 2, 5 * unit(), "both reports observed")
        assert waiting == [0, 0]  # the writer had sent each one already
    finally:
        client.stop()
        await asyncio.wait_for(task, 5 * unit())


async def test_every_report_is_observed_before_run_returns() -> None:
    seen: Seen = []
    client = SchedulerClient(
        SchedulerConfig(bus_url="ws://127.0.0.1:9"), on_report=lambda r, a: seen.append((r, a))
    )
    task = asyncio.create_task(client.run())
    await wait_until(lambda: client._executor is not None, 5 * unit(), "the executor")
    client.executor.submit(Assignment(id="j1", attempt=1, priority=5, runtime=1.0, task="nope"))
    assert seen == []  # observed in a later loop iteration
    client.stop()
    await asyncio.wait_for(task, 5 * unit())
    assert [(r.event, r.id) for r, _ in seen] == [("failed", "j1")]


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
    start_client(fake_bus.url, size=1)
    peer = await fake_bus.peer()
    await peer.expect("register")
    # A short lease brings the heartbeats (1 s by default) closer together.
    await peer.send({"type": "registered", "name": "s", "protocol": 2, "lease_s": 0.15 * unit()})
    await peer.expect("heartbeat", running=0, queued=0)
    await peer.assign("long", runtime=60)
    await peer.assign("waiting", runtime=60)
    await peer.expect("heartbeat", running=1, queued=1, timeout=0.6)


async def test_lost_connection_keeps_jobs_and_reattaches_with_what_it_holds(
    fake_bus: FakeBus, start_client: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    seen: Seen = []
    client = start_client(fake_bus.url, seen, name="alpha", size=2)
    peer = await fake_bus.peer()
    await peer.register("alpha-1")
    await peer.assign("long", runtime=60)
    await peer.assign("short", runtime=0.5)
    await peer.assign("next", runtime=60, priority=9)
    await peer.assign("queued", runtime=60, priority=9, attempt=4)
    await peer.expect("report", event="started", id="short")
    long_pid = client.executor.pid_of("long")
    fake_bus.refusing = True
    await peer.ws.close()
    await wait_until(
        lambda: ("succeeded", "short") in [(r.event, r.id) for r, _ in seen],
        5 * unit(),
        "the short job to end while the bus is away",
    )
    assert "lost the bus" in caplog.text and "cannot reach the bus" in caplog.text
    assert client.executor.pid_of("long") == long_pid
    assert [(r.event, r.id) for r in client.outbox] == [("succeeded", "short"), ("started", "next")]
    fake_bus.refusing = False
    again = await fake_bus.peer(timeout=10)
    register = await again.expect("register")
    assert register["name"] == "alpha-1"  # the name the bus confirmed
    assert sorted(register["held"], key=lambda h: h["id"]) == [
        {"id": "long", "attempt": 1},
        {"id": "next", "attempt": 1},
        {"id": "queued", "attempt": 4},
        {"id": "short", "attempt": 1, "done": True},
    ]
    assert len(client.outbox) == 2  # nothing is sent before the bus confirms
    # The bus no longer gives "long" to this scheduler: its slot goes to "queued".
    await again.stop("long", 1, "reassigned")
    await again.send({"type": "registered", "name": "alpha-1", "protocol": 2})
    reports = [await again.expect("report") for _ in range(3)]
    assert [(f["event"], f["id"]) for f in reports] == [
        ("succeeded", "short"),
        ("started", "next"),
        ("started", "queued"),
    ]
    assert reports[0]["exit_code"] == 0
    await again.expect("heartbeat", running=2, queued=0)
    assert long_pid is not None
    await wait_until(lambda: not psutil.pid_exists(long_pid), 5 * unit(), "long to be stopped")
    client.stop()
    await asyncio.wait_for(again.closed.wait(), 10 * unit())
    assert again.reports("long") == []


async def test_reconnect_with_nothing_held_sends_an_empty_held_list(
    fake_bus: FakeBus, start_client: Starter
) -> None:
    start_client(fake_bus.url)
    peer = await fake_bus.peer()
    assert "held" not in await peer.register()
    await peer.ws.close()
    again = await fake_bus.peer()
    assert (await again.register())["held"] == []


async def test_stop_from_the_bus_drops_a_queued_attempt_and_purges_its_reports(
    fake_bus: FakeBus, start_client: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "scheduler.worker")
    client = start_client(fake_bus.url, size=1)
    peer = await fake_bus.peer()
    await peer.register()
    await peer.assign("first", runtime=60)
    await peer.assign("waiting", runtime=0.05, attempt=2)
    await peer.expect("report", event="started", id="first")
    await peer.stop("waiting", 1, "reassigned")  # stale: another attempt
    await peer.stop("nobody", 1, "cancelled", kind="cancel")
    await peer.stop("waiting", 2, "reassigned")
    await wait_until(lambda: client.executor.queued == 0, 5 * unit(), "the drop")
    assert "ignoring a stop of waiting attempt 1: not held here" in caplog.text
    assert "ignoring a stop of nobody attempt 1: not held here" in caplog.text
    assert client.executor.running == 1


async def test_cancel_stops_running_and_queued_jobs_and_reports_cancelled(
    fake_bus: FakeBus, start_client: Starter
) -> None:
    client = start_client(fake_bus.url, size=1)
    peer = await fake_bus.peer()
    await peer.register()
    await peer.assign("running", runtime=60, attempt=3)
    await peer.assign("waiting", runtime=60)
    await peer.expect("report", event="started", id="running")
    pid = client.executor.pid_of("running")
    await peer.stop("waiting", 1, "cancelled", kind="cancel")
    assert await peer.expect("report", event="cancelled") == {
        "cmd": "report",
        "event": "cancelled",
        "id": "waiting",
        "attempt": 1,
    }
    await peer.stop("running", 3, "cancelled", kind="cancel")
    cancelled = await peer.expect("report", event="cancelled", id="running")
    assert cancelled["attempt"] == 3
    assert pid is not None and not psutil.pid_exists(pid)
    assert peer.reports("running") == ["started", "cancelled"]
    assert peer.reports("waiting") == ["cancelled"]


async def test_the_kind_of_a_stop_decides_what_it_does_not_its_reason(
    fake_bus: FakeBus, start_client: Starter
) -> None:
    """A ``steal`` gives a queued job up (``revoked``), a ``cancel`` ends one
    (``cancelled``), whatever words ``reason`` has."""
    client = start_client(fake_bus.url, size=1)
    peer = await fake_bus.peer()
    await peer.register()
    await peer.assign("running", runtime=60)
    await peer.assign("stolen", runtime=60)
    await peer.assign("cancelled", runtime=60)
    await peer.expect("report", event="started", id="running")
    await peer.stop("stolen", 1, "cancelled", kind="steal")
    await peer.expect("report", event="revoked", id="stolen")
    await peer.stop("cancelled", 1, "stolen", kind="cancel")
    await peer.expect("report", event="cancelled", id="cancelled")
    await peer.stop("running", 1, "stolen", kind="steal")  # started: it stays
    await peer.stop("running", 1, "the job was requeued")
    await wait_until(lambda: client.executor.running == 0, 5 * unit(), "the drop")
    assert peer.reports("running") == ["started"]


async def test_bad_frames_from_the_bus_are_logged_not_fatal(
    fake_bus: FakeBus, start_client: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "scheduler.worker")
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
    # Threads an earlier test of this pytest process left are not the client's.
    before = set(threading.enumerate())
    # "localhost" may resolve to ::1 first, where nothing listens: the next address is tried.
    client = start_client(f"ws://localhost:{fake_bus.port}")
    peer = await fake_bus.peer()
    await peer.register()
    await wait_until(lambda: client.name is not None, 5 * unit(), "registration")
    assert set(threading.enumerate()) - before == set(), threading.enumerate()


@pytest.mark.parametrize("how", ["stop", "cancel"])
async def test_clean_shutdown_stops_jobs_then_closes_with_1000(fake_bus: FakeBus, how: str) -> None:
    client = SchedulerClient(SchedulerConfig(bus_url=fake_bus.url))
    task = asyncio.create_task(client.run())
    peer = await fake_bus.peer()
    await peer.register()
    await peer.assign("long", runtime=60)
    await peer.expect("report", event="started")
    assert len(job_processes()) == 1
    if how == "stop":
        client.stop()
        await asyncio.wait_for(task, 5 * unit())
    else:  # what SIGINT and SIGTERM do in the commands
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5 * unit())
    await asyncio.wait_for(peer.closed.wait(), 5 * unit())
    assert peer.close_code == 1000
    assert peer.alive_at_close == [] and job_processes() == []


async def test_default_name_is_host_and_pid(fake_bus: FakeBus, start_client: Starter) -> None:
    start_client(fake_bus.url)
    peer = await fake_bus.peer()
    register = await peer.register()
    assert register["name"] == f"{socket.gethostname()}-{os.getpid()}"


async def test_heartbeats_keep_flowing_while_a_burst_of_jobs_starts(
    fake_bus: FakeBus, start_client: Starter
) -> None:
    count = 30
    start_client(fake_bus.url, size=count, heartbeat_s=0.005)
    peer = await fake_bus.peer()
    await peer.register()
    await peer.expect("heartbeat")
    for n in range(count):  # sent back to back, so they arrive together
        await peer.ws.send(assign_frame(f"j{n}", runtime=60))
    order: list[str] = []
    while order.count("started") < count:
        frame = await peer.next()
        order.append(str(frame.get("event", frame["cmd"])))
    # Without yielding between frames, the burst would start in one long run.
    runs = "".join("s" if event == "started" else "." for event in order).split(".")
    assert max(len(run) for run in runs) <= count // 2, order


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("size", 0),
        ("size", 4097),
        ("timeout", 0.0),
        ("heartbeat_s", -1.0),
        ("grace", -0.1),
        ("outbox_limit", 0),
    ],
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


def test_outbox_keeps_order_and_drops_the_oldest_past_its_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = ReportQueue(limit=3)
    for n in range(5):
        outbox.append(Report("started", f"j{n}", 1))
    assert [r.id for r in outbox] == ["j2", "j3", "j4"]
    assert outbox.dropped == 2
    assert caplog.messages == [
        "outbox full (3 reports): dropped the oldest (started of j0 attempt 1); 1 dropped so far"
    ]
    first = outbox.popleft()
    outbox.push_front(first)
    assert [r.id for r in outbox] == ["j2", "j3", "j4"]


def test_outbox_lists_closed_attempts_and_purges_one() -> None:
    outbox = ReportQueue()
    for report in [
        Report("started", "a", 1),
        Report("succeeded", "a", 1),
        Report("evicted", "b", 2),
        Report("started", "c", 1),
        Report("failed", "d", 1),
        Report("cancelled", "e", 3),
    ]:
        outbox.append(report)
    assert outbox.closed_attempts() == [
        Held("a", 1, done=True),
        Held("b", 2, done=True),
        Held("d", 1, done=True),
        Held("e", 3, done=True),
    ]
    assert outbox.purge("a", 1) == 2
    assert outbox.purge("a", 2) == 0
    assert [(r.event, r.id) for r in outbox] == [
        ("evicted", "b"),
        ("started", "c"),
        ("failed", "d"),
        ("cancelled", "e"),
    ]


def test_register_frame_is_cut_to_fit_a_frame(caplog: pytest.LogCaptureFixture) -> None:
    small = Register(type="scheduler", protocol=2, name="s", held=[Held("a", 1)])
    assert fit_register(small) is small
    held = [Held(f"job-{n:08}", 1, done=n >= 5) for n in range(50_000)]
    big = Register(type="scheduler", protocol=2, name="s", held=held)
    fitted = fit_register(big)
    assert fitted.held is not None and 10_000 < len(fitted.held) < len(held)
    assert fitted.held == held[: len(fitted.held)]  # running attempts come first
    assert len(encode(fitted).encode()) <= MAX_FRAME_BYTES
    assert f"{len(fitted.held)} of 50000 held attempts fit in one frame" in caplog.text
    tight = fit_register(big, max_bytes=len(encode(fitted).encode()))
    assert tight.held == fitted.held


async def running_long_job(
    fake_bus: FakeBus, start_client: Starter, lease: float, **config: Any
) -> tuple[SchedulerClient, Peer, int]:
    """A scheduler "alpha" with ``lease`` (and ``config``) running one 60 s job "long":
    the client, its connection at the fake bus, and the job's pid."""
    client = start_client(fake_bus.url, name="alpha", grace=0.1 * unit(), heartbeat_s=0.1, **config)
    peer = await fake_bus.peer()
    await peer.expect("register")
    await peer.send({"type": "registered", "name": "alpha", "protocol": 2, "lease_s": lease})
    await peer.assign("long", runtime=60)
    await peer.expect("report", event="started", id="long")
    pid = client.executor.pid_of("long")
    assert pid is not None
    return client, peer, pid


async def test_a_scheduler_cut_off_longer_than_its_lease_stops_its_jobs(
    fake_bus: FakeBus, start_client: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    # The rule is LeaseView's (tests/test_fence.py); this is the one real run of it.
    lease = 0.5 * unit()
    client, peer, pid = await running_long_job(fake_bus, start_client, lease)
    fake_bus.refusing = True
    await peer.ws.close()
    await wait_until(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
        5 * unit(),
        "the job to be stopped",
    )
    assert "no answer from the bus for" in caplog.text
    assert client.executor.held() == []
    fake_bus.refusing = False
    again = await fake_bus.peer(timeout=10)
    register = await again.expect("register")
    assert register["held"] == []


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize(
    ("warm", "slow"), [(None, True), (WarmLimits(max_jobs=5), False)], ids=["slow", "cut-warm"]
)
async def test_a_bus_that_falls_silent_gets_the_jobs_stopped_and_the_connection_given_up(
    fake_bus: FakeBus,
    start_client: Starter,
    caplog: pytest.LogCaptureFixture,
    warm: WarmLimits | None,
    slow: bool,
) -> None:
    # The bus stops reading: TCP stays up, no pong comes, so only the fence (not the 5 s
    # keepalive) can stop the job before the lease may end.
    lease = 0.5 * unit()
    client, peer, pid = await running_long_job(fake_bus, start_client, lease, warm=warm)
    peer.ws.transport.pause_reading()
    await wait_until(lambda: gone(pid), 5 * unit(), "the job to be stopped")
    assert client.executor.held() == []
    assert not peer.closed.is_set()
    if slow:
        # The bus was only slow: the late pongs and frames come in now and change nothing.
        peer.ws.transport.resume_reading()
        await asyncio.wait_for(peer.closed.wait(), 5 * unit())
        assert peer.close_code == 1011
    # Else the bus never answers the close: the client drops the connection all the same.
    again = await fake_bus.peer()
    assert (await again.expect("register"))["held"] == []
    assert caplog.text.count("no answer from the bus for") == 1, caplog.text
    assert "stopping 1 jobs" in caplog.text and "giving this connection up" in caplog.text
    peer.ws.transport.resume_reading()  # the fake bus may see the old connection end


async def test_a_restarting_bus_s_promise_reaches_the_lease_view(
    fake_bus: FakeBus, start_client: Starter
) -> None:
    # What the promise does to the cut-off is policy (tests/test_fence.py, on a fake
    # clock); here only that the client hands it over.
    lease = 0.5 * unit()
    client, peer, _ = await running_long_job(fake_bus, start_client, lease)
    await peer.send({"type": "restarting", "keep_s": 30 * unit()})
    await wait_until(lambda: client.lease.keep_until is not None, 5 * unit(), "the promise")
    assert not client.lease.fence_due(time.monotonic() + 4 * lease, holding=True)


async def test_progress_and_output_are_dropped_while_the_bus_is_away() -> None:
    client = SchedulerClient(SchedulerConfig(bus_url="ws://127.0.0.1:9"))
    job = Assignment(id="j1", attempt=1, priority=5)
    client._on_event(Report("progress", "j1", 1, progress=0.5), job)
    client._on_event(Report("output", "j1", 1, output="x"), job)
    client._on_event(Report("succeeded", "j1", 1, output="x"), job)
    assert [r.event for r in client.outbox] == ["succeeded"], "the end waits for the bus"
