"""The ``retry`` and extended ``list_jobs`` commands on a real bus: who may retry, the
``retried`` event to the requester and every monitor, the reply's refusals, and listing
final jobs newest first with filters."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
from test_auth import secured
from test_bus import bus_with, client, next_event, register, request, submit

from scheduler.bus.server import BusServer
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobPayload


async def test_a_retry_is_announced_to_its_requester_and_every_monitor() -> None:
    async with (
        secured() as bus,
        client(bus) as alice,
        client(bus) as bob,
        client(bus) as admin,
        client(bus) as monitor,
    ):
        await register(alice, "producer", token="t-alice")
        await register(bob, "producer", token="t-bob")
        await register(admin, "monitor", token="t-admin")
        await register(monitor, "monitor", token="t-monitor")
        job_id = await submit(alice, task="unserved")
        assert (await request(alice, {"cmd": "cancel", "id": job_id}))["state"] == "cancelled"
        await next_event(alice, "cancelled")
        refused = await request(bob, {"cmd": "retry", "ids": [job_id], "ref": 1})
        assert refused["jobs"] == [] and "belongs to another submitter" in refused["errors"][job_id]
        denied = await request(monitor, {"cmd": "retry", "ids": [job_id]})
        assert denied["message"] == (
            "a monitor token may not send retry; only a producer or admin token may"
        )
        retried = await request(alice, {"cmd": "retry", "ids": [job_id, "nope"], "ref": 2})
        assert (retried["type"], retried["ref"]) == ("retried", 2)
        assert [(e["event"], e["id"], e["state"]) for e in retried["jobs"]] == [
            ("retried", job_id, "queued")
        ]
        assert list(retried["errors"]) == ["nope"]
        assert (await next_event(alice, "retried"))["id"] == job_id
        assert (await next_event(monitor, "retried"))["id"] == job_id
        again = await request(admin, {"cmd": "retry", "ids": [job_id]})
        assert "is queued, not final" in again["errors"][job_id]


async def test_list_jobs_adds_final_jobs_newest_first_and_filters(bus: BusServer) -> None:
    async with ProducerClient(bus.url) as client:
        for job_id in ("a-1", "b-1", "a-2"):
            task = "other" if job_id == "b-1" else "sleep"
            await client.submit(JobPayload(runtime=5, task=task, job_id=job_id, args=[job_id]))
        await client.cancel("a-1")
        assert [e.id for e in (await client.list_jobs()).jobs] == ["b-1", "a-2"]
        every = await client.list_jobs(final=True, newest_first=True)
        assert [(e.id, e.state, e.args) for e in every.jobs] == [
            ("a-2", "queued", ["a-2"]),
            ("b-1", "queued", ["b-1"]),
            ("a-1", "cancelled", ["a-1"]),
        ]
        assert every.jobs[2].finished_at is not None and every.jobs[0].finished_at is None
        assert every.jobs[0].submitted_at is not None

        async def ids(**query: object) -> list[str]:
            return [e.id for e in (await client.list_jobs(final=True, **query)).jobs]  # type: ignore[arg-type]

        assert await ids(prefix="a-") == ["a-1", "a-2"]
        assert await ids(task="other") == ["b-1"]
        assert await ids(states=["cancelled", "queued"], prefix="a") == ["a-1", "a-2"]
        assert await ids(since=time.time() + 60) == []
        page = await client.list_jobs(limit=1, final=True, newest_first=True)
        assert ([e.id for e in page.jobs], page.more) == (["a-2"], True)


async def test_a_journal_that_cannot_be_read_fails_the_listing_not_the_bus(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "bus.db"
    async with bus_with(db=str(db)) as bus, client(bus) as producer:
        await register(producer, "producer")
        await submit(producer, task="unserved")
        with closing(sqlite3.connect(db, isolation_level=None)) as other:
            other.execute("ALTER TABLE jobs RENAME TO hidden")
            failed = await request(producer, {"cmd": "list_jobs", "final": True, "ref": 1})
            assert failed["type"] == "error" and failed["ref"] == 1
            assert failed["message"].startswith("listing jobs failed: journal ")
            assert "no such table: jobs" in failed["message"]
            live = await request(producer, {"cmd": "list_jobs", "ref": 2})
            assert [e["state"] for e in live["jobs"]] == ["queued"]
            other.execute("ALTER TABLE hidden RENAME TO jobs")
        listed = await request(producer, {"cmd": "list_jobs", "final": True, "ref": 3})
        assert [e["state"] for e in listed["jobs"]] == ["queued"]
    assert "listing jobs failed" in caplog.text
