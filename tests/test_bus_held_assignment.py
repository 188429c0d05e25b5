"""The bus's side of held assignments: a scheduler that registers ``hold`` gets each
assignment before its commit, marked ``hold``, then its ``release`` once the commit is
done, or a ``stop`` if the journal refuses the job (``scheduler.protocol.Assign``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest
from conftest import unit, wait_until
from test_bus import (
    beat,
    bus_with,
    client,
    committed,
    hold_commits,
    next_event,
    recv,
    register,
    report,
    request,
    submit_skipping_events,
)
from test_bus_journal_failure import POISON, poison_trigger

from scheduler.bus.config import bus_rules
from scheduler.bus.server import BusServer


def timeout() -> float:
    return 5 * unit()


@pytest.fixture
async def db_bus(tmp_path: Path) -> AsyncIterator[BusServer]:
    async with bus_with(db=str(tmp_path / "bus.db")) as bus:
        yield bus


async def test_the_assignment_comes_held_before_its_commit_and_is_released_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "bus.db"
    async with bus_with(db=str(db)) as bus, client(bus) as scheduler, client(bus) as producer:
        await register(scheduler, "scheduler", name="s1", size=1, hold=True)
        await register(producer, "producer")
        called, go_on = hold_commits(monkeypatch)
        await producer.send('{"cmd": "job_request", "payload": {"priority": 1, "runtime": 1}}')
        await asyncio.wait_for(called.wait(), timeout())
        assign = await recv(scheduler)
        assert (assign["type"], assign["hold"], assign["job"]["attempt"]) == ("assign", True, 1)
        assert committed(db) == []
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(scheduler.recv(), 0.2 * unit())
        go_on.set()
        job_id = assign["job"]["id"]
        assert await recv(scheduler) == {"type": "release", "id": job_id, "attempt": 1}
        assert (await recv(producer))["id"] == job_id
        assert committed(db) == [(job_id, "assigned")]


async def test_a_refused_job_s_hold_is_stopped_and_never_released(
    tmp_path: Path, db_bus: BusServer
) -> None:
    async with client(db_bus) as scheduler, client(db_bus) as producer:
        await register(
            scheduler, "scheduler", name="s1", size=1, tasks=["sleep", "poison"], hold=True
        )
        await register(producer, "producer")
        beating = asyncio.create_task(beat(scheduler))
        with closing(poison_trigger(tmp_path / "bus.db")) as trigger:
            frame = {"cmd": "job_request", "ref": 1, "payload": POISON}
            refused = await request(producer, frame)
            assert "submit refused" in refused["message"]
            trigger.execute("DROP TRIGGER poison")
        assign = await recv(scheduler)
        assert assign["hold"] is True
        job_id = assign["job"]["id"]
        stop = await recv(scheduler)
        assert (stop["type"], stop["id"], stop["attempt"], stop["kind"]) == (
            "stop",
            job_id,
            1,
            "drop",
        )
        await wait_until(lambda: db_bus.journal.failure is None, timeout(), "journal recovered")
        later = await submit_skipping_events(producer, priority=1)
        assert (await recv(scheduler))["job"]["id"] == later
        assert await recv(scheduler) == {"type": "release", "id": later, "attempt": 1}
        beating.cancel()


async def test_a_scheduler_that_does_not_ask_gets_plain_assignments(db_bus: BusServer) -> None:
    async with client(db_bus) as scheduler, client(db_bus) as producer:
        await register(scheduler, "scheduler", name="s1", size=2)
        await register(producer, "producer")
        first = await submit_skipping_events(producer, priority=1)
        second = await submit_skipping_events(producer, priority=1)
        frames = [await recv(scheduler), await recv(scheduler)]
        assert [(f["type"], f["job"]["id"], "hold" in f) for f in frames] == [
            ("assign", first, False),
            ("assign", second, False),
        ]


async def test_an_attempt_taken_back_before_its_commit_gets_a_stop_and_no_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The commit stalls past the start deadline: the core takes attempt 1 back from s1
    while its release still waits for that commit. The stop withdraws the release, so
    s1 hears of attempt 1 only the hold and the stop, and s2 gets attempt 2."""
    rules = bus_rules(start_deadline=0.5 * unit())
    async with bus_with(db=str(tmp_path / "bus.db"), rules=rules) as bus:
        async with client(bus) as s1, client(bus) as s2, client(bus) as producer:
            await register(s1, "scheduler", name="s1", size=1, hold=True)
            await register(producer, "producer")
            beating = [asyncio.create_task(beat(s1))]
            called, go_on = hold_commits(monkeypatch)
            await producer.send('{"cmd": "job_request", "payload": {"runtime": 1}}')
            await asyncio.wait_for(called.wait(), timeout())
            hold = await recv(s1)
            job_id = hold["job"]["id"]
            assert (hold["hold"], hold["job"]["attempt"]) == (True, 1)
            await wait_until(
                lambda: "s1: started none of its 1 assigned jobs" in caplog.text,
                timeout(),
                "the start deadline passes",
            )
            await s2.send(
                '{"cmd": "register", "type": "scheduler", "protocol": 2, "name": "s2",'
                ' "size": 1, "hold": true}'
            )
            beating.append(asyncio.create_task(beat(s2)))
            go_on.set()
            stop = await recv(s1)
            assert (stop["type"], stop["id"], stop["attempt"]) == ("stop", job_id, 1)
            frames = [await recv(s2) for _ in range(3)]
            kinds = [(f["type"], f.get("job", f).get("attempt")) for f in frames]
            assert sorted(kinds, key=str) == sorted(
                [("registered", None), ("assign", 2), ("release", 2)], key=str
            )
            await request(producer, {"cmd": "stats", "ref": 9})
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(s1.recv(), 0.2 * unit())
            for task in beating:
                task.cancel()


@pytest.mark.parametrize("hold", [True, False], ids=["held", "plain"])
async def test_a_job_cancelled_before_its_commit_never_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hold: bool
) -> None:
    """The cancel comes while the job's release (held) or assignment (plain) waits for the
    commit, and withdraws it. A holding s1 hears of the attempt only the hold and the
    stop (kind ``cancel``, which it confirms). A plain s1 never hears of it: no
    assignment, no stop, and the job ends cancelled at once."""
    async with bus_with(db=str(tmp_path / "bus.db")) as bus:
        async with client(bus) as s1, client(bus) as producer:
            await register(s1, "scheduler", name="s1", size=1, hold=hold)
            await register(producer, "producer")
            called, go_on = hold_commits(monkeypatch)
            job = {"runtime": 1, "job_id": "cancelled-early"}
            await producer.send(json.dumps({"cmd": "job_request", "payload": job}))
            await asyncio.wait_for(called.wait(), timeout())
            if hold:
                first = await recv(s1)
                assert (first["hold"], first["job"]["id"]) == (True, "cancelled-early")
            await producer.send('{"cmd": "cancel", "id": "cancelled-early", "ref": 2}')
            gate = bus._hub.gate
            await wait_until(
                lambda: any(b'"cancel_reply"' in held.frame for held in gate._held),
                timeout(),
                "the cancel's reply waits for the commit",
            )
            go_on.set()
            if hold:
                stop = await recv(s1)
                assert (stop["type"], stop["id"], stop["kind"]) == (
                    "stop",
                    "cancelled-early",
                    "cancel",
                )
                await report(s1, "cancelled", "cancelled-early", 1)
            cancelled = await next_event(producer, "cancelled")
            assert cancelled["id"] == "cancelled-early"
            with pytest.raises(TimeoutError):
                frame = await asyncio.wait_for(s1.recv(), 0.2 * unit())
                raise AssertionError(f"s1 was also sent {frame!r}")
