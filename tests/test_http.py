"""The bus's HTTP routes on its own port, against a real ``python -m scheduler.bus``:
``/healthz``, ``/metrics`` (parsed with prometheus-client's parser), ``/api/jobs``, the
page's static files, and the refusals (401, 403, 404, 405, 400 naming the parameter)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest
from conftest import BusProcess, Commands, unit, wait_until
from dashboard_helpers import WireProducer, get
from prometheus_client.parser import text_string_to_metric_families
from test_bus import bus_with, client, register, request
from test_bus_journal_failure import POISON, poison_trigger
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.http11 import Request

from scheduler.bus.guard import header_refusal
from scheduler.bus.http import BadQuery, is_websocket, list_request
from scheduler.bus.metrics import METRIC_NAMES

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def bus_process(commands: Commands, tmp_path: Path) -> AsyncIterator[BusProcess]:
    """A real bus process with its token file."""
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    yield bus


def http(bus: BusProcess, path: str) -> str:
    return f"http://127.0.0.1:{bus.port}{path}"


async def start_scheduler(commands: Commands, bus: BusProcess) -> None:
    """A ``test_scheduler`` with two slots, registered."""
    proc = await commands.start("scheduler.test_scheduler", "--bus", bus.url, "-s", "2")

    async def registered() -> bool:
        return bool((await get(http(bus, "/healthz"))).json()["schedulers"] == 1)

    async with asyncio.timeout(20 * unit()):
        while not await registered():
            assert proc.returncode is None, commands.log_of(proc)
            await asyncio.sleep(0.05)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_healthz_is_open_and_the_bus_logs_the_dashboard_url(
    bus_process: BusProcess, commands: Commands
) -> None:
    assert bus_process.proc is not None
    assert f"dashboard: http://127.0.0.1:{bus_process.port}/" in commands.log_of(bus_process.proc)
    reply = await get(http(bus_process, "/healthz"))
    assert reply.status == 200
    body = reply.json()
    assert body["ok"] is True and body["journal"] == {"ok": True, "error": None}
    assert body["schedulers"] == 0 and body["uptime_s"] >= 0


async def test_metrics_parse_and_move_after_jobs_run(
    bus_process: BusProcess, commands: Commands
) -> None:
    token = bus_process.token("monitor")
    before = samples((await get(http(bus_process, "/metrics"), token)).body.decode())
    assert {name for name, _ in before} >= {"schedbus_schedulers", "schedbus_steals_total"}
    await start_scheduler(commands, bus_process)
    producer = await WireProducer.open(bus_process.url, bus_process.token("producer"))
    ids = [await producer.submit(priority=p, runtime=0.05 * unit()) for p in (1, 1, 5)]
    for job_id in ids:
        assert (await producer.wait_final(job_id))["event"] == "succeeded"
    await producer.close()
    reply = await get(http(bus_process, "/metrics"), token)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=")
    text = reply.body.decode()
    families = {family.name for family in text_string_to_metric_families(text)}
    assert {name.removesuffix("_total") for name in METRIC_NAMES} <= families
    after = samples(text)
    succeeded = ("schedbus_job_events_total", (("event", "succeeded"), ("task", "sleep")))
    assert after[succeeded] == 3
    assert after[("schedbus_job_wait_seconds_count", (("priority", "1"),))] == 2
    assert after[("schedbus_job_wait_seconds_count", (("priority", "5"),))] == 1
    assert after[("schedbus_job_run_seconds_count", (("priority", "1"),))] == 2
    assert after[("schedbus_journal_commit_seconds_count", ())] >= 3
    assert after[("schedbus_schedulers", ())] == 1
    assert after[("schedbus_evictions_total", ())] == 0


async def test_the_api_needs_a_token_that_may_read(bus_process: BusProcess) -> None:
    for path in ("/metrics", "/api/jobs", "/api/jobs/" + "0" * 32):
        refused = await get(http(bus_process, path))
        assert refused.status == 401, path
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert "token" in refused.json()["error"]
        assert (await get(http(bus_process, path), "not-a-token")).status == 401
    scheduler = await get(http(bus_process, "/api/jobs"), bus_process.token("scheduler"))
    assert scheduler.status == 403
    assert scheduler.json()["error"] == "a scheduler token may not read jobs"


async def test_the_api_lists_jobs_and_shows_one(
    bus_process: BusProcess, commands: Commands
) -> None:
    monitor = bus_process.token("monitor")
    admin = await WireProducer.open(bus_process.url, bus_process.token("admin"))
    queued = await admin.submit(priority=3, runtime=0.05 * unit())
    listed = await get(http(bus_process, "/api/jobs?state=queued&limit=10"), monitor)
    assert listed.status == 200 and listed.headers["Cache-Control"] == "no-store"
    assert [job["id"] for job in listed.json()["jobs"]] == [queued]
    assert (await get(http(bus_process, "/api/jobs?state=running"), monitor)).json()["jobs"] == []
    one = await get(http(bus_process, f"/api/jobs/{queued}"), monitor)
    assert one.status == 200
    assert one.json()["state"] == "queued" and one.json()["priority"] == 3
    # A producer token reads only its own jobs.
    producer = bus_process.token("producer")
    assert (await get(http(bus_process, "/api/jobs"), producer)).json()["jobs"] == []
    assert (await get(http(bus_process, f"/api/jobs/{queued}"), producer)).status == 403
    await start_scheduler(commands, bus_process)
    await admin.wait_final(queued)
    await admin.close()
    # A final job is read back from the journal.
    done = await get(http(bus_process, f"/api/jobs/{queued}"), monitor)
    assert done.status == 200 and done.json()["state"] == "succeeded"
    missing = await get(http(bus_process, "/api/jobs/" + "f" * 32), monitor)
    assert missing.status == 404 and missing.json() == {"error": "no job " + "f" * 32}


async def test_the_api_filters_jobs_by_task(bus_process: BusProcess) -> None:
    monitor = bus_process.token("monitor")
    admin = await WireProducer.open(bus_process.url, bus_process.token("admin"))
    sleep = await admin.submit(runtime=1.0)
    await admin.submit(task="other", args={"x": 1})
    listed = await get(http(bus_process, "/api/jobs?task=sleep"), monitor)
    assert [job["id"] for job in listed.json()["jobs"]] == [sleep]
    await admin.close()


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("state=sleeping", "state"),
        ("state=queued&state=running", "state"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("limit=1000001", "limit"),
        ("colour=red", "colour"),
        ("task=" + "x" * 300, "task"),
    ],
)
async def test_a_bad_query_parameter_is_a_400_naming_it(
    bus_process: BusProcess, query: str, parameter: str
) -> None:
    reply = await get(http(bus_process, f"/api/jobs?{query}"), bus_process.token("admin"))
    assert reply.status == 400
    assert reply.json()["parameter"] == parameter
    assert repr(parameter) in reply.json()["error"]


async def test_bad_paths_are_404_and_bad_methods_405(bus_process: BusProcess) -> None:
    admin = bus_process.token("admin")
    for path in ("/nope", "/static/nope.js", "/api", "/static/../auth.py", "/metrics/x"):
        reply = await get(http(bus_process, path), admin)
        assert reply.status == 404, path
        assert "error" in reply.json()
    for method in ("POST", "DELETE", "PUT"):
        reply = await get(http(bus_process, "/healthz"), admin, method=method)
        assert reply.status == 405 and reply.headers["Allow"] == "GET"


async def test_the_page_and_its_files_are_served_without_a_token(bus_process: BusProcess) -> None:
    page = await get(http(bus_process, "/"))
    assert page.status == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"<title>schedbus dashboard</title>" in page.body
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    for path, kind in [
        ("/static/app.js", "text/javascript; charset=utf-8"),
        ("/static/style.css", "text/css; charset=utf-8"),
        ("/static/vendor/uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
        ("/static/vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
    ]:
        reply = await get(http(bus_process, path))
        assert reply.status == 200 and reply.headers["Content-Type"] == kind, path
        assert reply.body
        assert f'"{path}"'.encode() in page.body or path.endswith("LICENSE")


async def test_the_page_may_open_a_websocket_but_a_foreign_page_may_not(
    bus_process: BusProcess,
) -> None:
    origin = f"http://127.0.0.1:{bus_process.port}"
    async with connect(bus_process.url, origin=origin) as ws:  # type: ignore[arg-type]
        await ws.send('{"cmd": "register", "type": "monitor", "protocol": 2}')
        assert "token required" in await ws.recv()
    with pytest.raises(Exception, match="403"):
        async with connect(bus_process.url, origin="http://127.0.0.1:1"):  # type: ignore[arg-type]
            pass


# --- the pure parts ----------------------------------------------------------------------


def test_the_bus_own_origin_passes_the_guard_and_no_other() -> None:
    allowed = frozenset({"localhost", "127.0.0.1"})
    assert header_refusal(["127.0.0.1:8101"], ["http://127.0.0.1:8101"], allowed, ()) is None
    assert header_refusal(["localhost:8101"], ["https://LOCALHOST:8101"], allowed, ()) is None
    assert header_refusal(["127.0.0.1:8101"], ["http://127.0.0.1:8102"], allowed, ()) == "Origin"
    assert header_refusal(["evil.example"], ["http://evil.example"], allowed, ()) == "Host"


def test_a_websocket_upgrade_is_told_from_plain_http() -> None:
    upgrade = Request("/", Headers([("Upgrade", "WebSocket"), ("Connection", "Upgrade")]))
    assert is_websocket(upgrade)
    assert not is_websocket(Request("/", Headers([("Host", "localhost")])))


def test_a_query_becomes_the_list_jobs_request() -> None:
    request = list_request({"state": ["failed"], "limit": ["20"]})
    assert request.states == ["failed"] and request.limit == 20
    assert list_request({}).states is None
    with pytest.raises(BadQuery) as refused:
        list_request({"prefix": [""]})
    assert refused.value.parameter == "prefix"


async def test_healthz_is_503_while_the_journal_cannot_commit(tmp_path: Path) -> None:
    db = tmp_path / "bus.db"
    async with bus_with(db=str(db)) as bus:
        url = f"http://127.0.0.1:{bus.port}/healthz"
        async with client(bus) as producer:
            await register(producer, "producer")
            with closing(poison_trigger(db)) as trigger:
                frame = {"cmd": "job_request", "ref": 1, "payload": POISON}
                assert (await request(producer, frame))["type"] == "error"
                failing = await get(url)
                assert failing.status == 503
                body = failing.json()
                assert body["ok"] is False and body["journal"]["ok"] is False
                assert "poison refused by the test" in body["journal"]["error"]
                trigger.execute("DROP TRIGGER poison")
        await wait_until(lambda: bus.journal.failure is None, 5 * unit(), "journal recovered")
        assert (await get(url)).status == 200


async def test_the_api_is_503_while_the_journal_cannot_be_read(tmp_path: Path) -> None:
    db = tmp_path / "bus.db"
    async with bus_with(db=str(db)) as bus:
        url = f"http://127.0.0.1:{bus.port}/api/jobs"
        with closing(sqlite3.connect(db, isolation_level=None)) as other:
            other.execute("ALTER TABLE jobs RENAME TO hidden")
            failing = await get(url)
            assert failing.status == 503
            assert "no such table: jobs" in failing.json()["error"]
            other.execute("ALTER TABLE hidden RENAME TO jobs")
        assert (await get(url)).status == 200
