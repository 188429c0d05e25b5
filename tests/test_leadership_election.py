"""The election on a real PostgreSQL (scheduler.bus.leadership), in this test's event
loop: real buses (in-memory journals), the real lock, real client connections."""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.request
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import psycopg
import pytest
from click.testing import CliRunner
from conftest import unit, wait_until
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from scheduler.bus.cli import cli as bus_cli
from scheduler.bus.config import BusConfig
from scheduler.bus.leadership import ElectedServer, Election, LeaderBus, migrate
from scheduler.bus.leadership_lock import LockSession
from scheduler.bus.leadership_standby import redirect_location
from scheduler.bus.server import BusServer
from scheduler.policy.leadership import StepDown
from scheduler.producer.client import ProducerClient, SubmitError
from scheduler.protocol import JobPayload


class MemoryBus:
    """A real bus on an in-memory journal, as the election starts it."""

    def __init__(self, port: int) -> None:
        self.server = BusServer(BusConfig(host="127.0.0.1", port=port))

    async def start(self) -> None:
        await self.server.start()

    async def serve_forever(self) -> None:
        await self.server.serve_forever()

    def fenced(self) -> bool:
        return False


class Candidate:
    """One bus taking part in the election, run as a task; its step-downs recorded."""

    def __init__(self, dsn: str, advertise: str | None = None, *, stored: bool = False) -> None:
        self.dsn = dsn if stored else None
        self.steps: list[StepDown] = []
        self.bus: MemoryBus | None = None
        self.epochs: list[int] = []
        self.election = Election(
            BusConfig(host="127.0.0.1", port=0),
            dsn,
            self._make,
            advertise=advertise,
            step_down=self._down,
        )
        self.task = asyncio.create_task(self.election.run())

    def _make(self, port: int, epoch: int) -> LeaderBus:
        self.epochs.append(epoch)
        if self.dsn is not None:
            config = BusConfig(host="127.0.0.1", port=port, store=self.dsn, leader_epoch=epoch)
            return ElectedServer(BusServer(config))
        self.bus = MemoryBus(port)
        return self.bus

    def _down(self, decision: StepDown) -> None:
        self.steps.append(decision)
        self.task.cancel()

    @property
    def url(self) -> str:
        return self.election.leadership.advertise

    def role_is(self, role: str) -> Callable[[], bool]:
        """Whether this bus has ``role``; a leader only once its bus is made (the election
        takes the role as it wins the lock, then closes its standby listener)."""
        if role == "leader":
            return lambda: self.election.leadership.role == role and bool(self.epochs)
        return lambda: self.election.leadership.role == role

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def kill_session(self, dsn: str) -> LockSession:
        """End this candidate's lock session from the server's side; return it."""
        session = self.election.session
        assert session is not None
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (session.pid,))
        return session


@pytest.fixture
async def leader_dsn(postgres_dsn: str) -> str:
    await asyncio.to_thread(migrate, postgres_dsn)
    return postgres_dsn


@pytest.fixture
async def pair(leader_dsn: str) -> AsyncIterator[tuple[Candidate, Candidate]]:
    first = Candidate(leader_dsn)
    await wait_until(first.role_is("leader"), 10 * unit(), "the first bus leads")
    second = Candidate(leader_dsn)
    await wait_until(
        lambda: second.election.leadership.leader == first.url, 10 * unit(), "a standby"
    )
    try:
        yield first, second
    finally:
        await first.stop()
        await second.stop()


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_one_leads_the_other_stands_by_and_says_so(
    pair: tuple[Candidate, Candidate],
) -> None:
    first, second = pair
    assert first.epochs == [1] and second.epochs == []
    http = "http" + second.url.removeprefix("ws")
    status, body = await asyncio.to_thread(_get, http + "/healthz")
    assert (status, body) == (200, {"ok": True, "role": "standby", "leader": first.url})


@pytest.mark.parametrize(
    ("register", "answer"),
    [
        ({"cmd": "register", "type": "producer", "protocol": 2}, "not_leader"),
        ({"cmd": "register", "type": "scheduler"}, "error"),
    ],
)
async def test_a_standby_refuses_every_client_naming_the_leader(
    pair: tuple[Candidate, Candidate], register: dict[str, object], answer: str
) -> None:
    first, second = pair
    async with connect(second.url) as ws:
        await ws.send(json.dumps(register))
        reply = json.loads(await ws.recv())
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert reply["type"] == answer and first.url in reply["message"]
    assert reply.get("leader", first.url) == first.url
    assert reply.get("field", "leader") == "leader"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013


async def test_a_client_sent_to_a_standby_registers_with_the_leader(
    pair: tuple[Candidate, Candidate],
) -> None:
    first, second = pair
    assert first.bus is not None
    async with ProducerClient(second.url, connect_timeout=10 * unit()) as client:
        assert client.name is not None
        assert first.bus.server.connection_count() == 1


async def test_a_leader_whose_lock_session_is_killed_steps_down_and_a_standby_takes_over(
    pair: tuple[Candidate, Candidate], leader_dsn: str
) -> None:
    first, second = pair
    await first.kill_session(leader_dsn)
    await wait_until(lambda: bool(first.steps), 5 * unit(), "the leader steps down")
    # Its socket tells at once; a renewal under way when the session ends tells instead.
    assert first.steps[0].cause in ("lock_lost", "check_failed")
    await wait_until(second.role_is("leader"), 10 * unit(), "the standby takes over")
    assert second.epochs == [2]


async def test_a_standby_that_loses_its_session_reconnects_and_keeps_trying(
    pair: tuple[Candidate, Candidate], leader_dsn: str
) -> None:
    first, second = pair
    session = await second.kill_session(leader_dsn)
    await wait_until(
        lambda: second.election.session not in (None, session), 10 * unit(), "a new session"
    )
    await first.stop()
    await wait_until(second.role_is("leader"), 10 * unit(), "the standby takes over")
    assert second.steps == []


def _head(url: str, path: str) -> tuple[int, str | None]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Location")
    finally:
        conn.close()


async def test_a_standby_sends_a_browser_to_the_leaders_dashboard(
    pair: tuple[Candidate, Candidate],
) -> None:
    first, second = pair
    http_url = "http" + second.url.removeprefix("ws")
    status, location = await asyncio.to_thread(_head, http_url, "/api/jobs?state=queued")
    assert status == 307
    assert location == "http" + first.url.removeprefix("ws") + "/api/jobs?state=queued"


async def test_a_bus_is_named_by_its_advertised_url(leader_dsn: str) -> None:
    first = Candidate(leader_dsn, advertise="ws://bus-a.example:8101")
    await wait_until(first.role_is("leader"), 10 * unit(), "the first bus leads")
    second = Candidate(leader_dsn)
    try:
        await wait_until(
            lambda: second.election.leadership.leader == "ws://bus-a.example:8101",
            10 * unit(),
            "the standby names the advertised URL",
        )
    finally:
        await first.stop()
        await second.stop()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--advertise", "ws://a:8101"], "give --store"),
        (["--store", "postgresql://h/db", "--advertise", "http://a:8101"], "--advertise"),
    ],
)
def test_advertise_needs_a_store_and_a_websocket_url(args: list[str], words: str) -> None:
    result = CliRunner().invoke(bus_cli, args)
    assert result.exit_code == 2
    assert words in result.output


async def test_a_leader_whose_journal_is_fenced_steps_down(leader_dsn: str) -> None:
    leader = Candidate(leader_dsn, stored=True)
    try:
        await wait_until(leader.role_is("leader"), 10 * unit(), "the bus leads")
        async with await psycopg.AsyncConnection.connect(leader_dsn, autocommit=True) as admin:
            await admin.execute("UPDATE schedbus_leader SET epoch = epoch + 1 WHERE id = 1")
        async with ProducerClient(leader.url, connect_timeout=10 * unit()) as client:
            with pytest.raises(SubmitError, match="fenced"):
                await client.submit(JobPayload(priority=1, runtime=0.1))
        await wait_until(lambda: bool(leader.steps), 5 * unit(), "the leader steps down")
        assert leader.steps[0].cause == "store_fenced"
    finally:
        await leader.stop()


@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("/api/jobs?state=queued", "http://10.0.0.1:8101/api/jobs?state=queued"),
        ("/", "http://10.0.0.1:8101/"),
        ("@evil.example/x", None),
        ("http://evil.example/x", None),
        ("//evil.example/x", None),
        ("", None),
    ],
)
def test_a_standby_redirects_only_a_path_to_the_leader(target: str, location: str | None) -> None:
    """A request target that is not a plain path would choose the host of the redirect
    (an open redirect): it gets a 400 instead."""
    assert redirect_location("http://10.0.0.1:8101", target) == location
