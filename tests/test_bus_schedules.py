"""Schedules on a real bus: declared by schedulers, run by command, fired as jobs."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from conftest import unit, wait_until
from test_bus import client, recv, register, registered, report

from scheduler.auth import Token, TokenTable
from scheduler.bus.config import BusConfig
from scheduler.bus.server import BusServer

TOKENS = TokenTable((Token("ops", "admin", "a" * 20), Token("eyes", "monitor", "m" * 20)))


def tick(every: float, **more: Any) -> dict[str, Any]:
    return {"name": "tick", "task": "noop", "every": every, **more}


def fired_at(job_id: str) -> float:
    name, _, when = job_id.partition("@")
    assert name == "tick"
    return datetime.fromisoformat(when).timestamp()


async def command(ws: Any, cmd: str, **fields: Any) -> dict[str, Any]:
    """Send a schedule command; return its reply (a monitor's job events are passed over)."""
    await ws.send(json.dumps({"cmd": cmd, "ref": cmd, **fields}))
    reply = await recv(ws)
    while reply["type"] == "event":
        reply = await recv(ws)
    assert reply["ref"] == cmd, reply
    return reply


async def test_two_schedulers_declaring_one_schedule_get_each_firing_once() -> None:
    every = 0.2 * unit()
    async with BusServer(BusConfig(port=0)) as bus:
        async with client(bus) as a, client(bus) as b, client(bus) as admin:
            for ws, name in ((a, "a"), (b, "b")):
                await registered(
                    ws, "scheduler", name=name, size=2, tasks=["noop"], schedules=[tick(every)]
                )
            await register(admin, "producer")
            listed = await command(admin, "schedule_query", query="list")
            assert [s["spec"]["name"] for s in listed["schedules"]] == ["tick"]
            seen: list[str] = []

            async def run(ws: Any) -> None:
                while True:
                    job = json.loads(await ws.recv())["job"]
                    seen.append(job["id"])
                    await report(ws, "succeeded", job["id"], job["attempt"])

            readers = [asyncio.create_task(run(ws)) for ws in (a, b)]
            try:
                await wait_until(lambda: len(seen) >= 8, 20 * every + 5 * unit(), "8 firings")
            finally:
                for reader in readers:
                    reader.cancel()
            seen = seen[:8]
        assert len(seen) == len(set(seen)) == 8
        times = sorted(fired_at(job_id) for job_id in seen)
        gaps = {round((later - earlier) / every) for earlier, later in pairwise(times)}
        assert gaps == {1}, "consecutive firings, none twice, none left out"


async def test_schedule_commands_and_their_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "scheduler.bus.server")
    async with BusServer(BusConfig(port=0, tokens=TOKENS, v1=False)) as bus:
        async with client(bus) as admin, client(bus) as eyes:
            await register(admin, "producer", token="a" * 20)
            await register(eyes, "monitor", token="m" * 20)
            cron = {"name": "tick", "task": "noop", "cron": "0 3 * * *", "tz": "Europe/Berlin"}
            added = await command(admin, "schedule_add", schedule=cron)
            assert added["message"] == "schedule tick added"
            assert added["schedules"][0]["next_fire"] > 0
            refused = await command(eyes, "schedule_add", schedule=cron)
            assert refused["type"] == "error" and "only an admin token" in refused["message"]
            bad = await command(admin, "schedule_add", schedule=cron | {"cron": "99 * * * *"})
            assert (bad["type"], bad["field"]) == ("error", "schedule.cron")
            both = await command(admin, "schedule_add", schedule=cron | {"every": 5})
            assert both["field"] == "schedule.every"
            nxt = await command(eyes, "schedule_query", query="next", name="tick", count=3)
            assert len(nxt["times"]) == 3
            assert all(datetime.fromtimestamp(t).minute == 0 for t in nxt["times"])
            shown = await command(eyes, "schedule_query", query="show", name="tick")
            assert shown["schedules"][0]["spec"]["tz"] == "Europe/Berlin"
            unknown = await command(eyes, "schedule_query", query="show", name="nope")
            assert (unknown["type"], unknown["field"]) == ("error", "name")
            nameless = await command(eyes, "schedule_query", query="next")
            assert nameless["field"] == "name"
            paused = await command(admin, "schedule_change", action="pause", name="tick")
            assert paused["schedules"][0]["paused"] is True
            again = await command(admin, "schedule_change", action="pause", name="tick")
            assert again["message"] == "schedule tick was paused already"
            resumed = await command(admin, "schedule_change", action="resume", name="tick")
            assert resumed["message"] == "schedule tick resumed"
            not_paused = await command(admin, "schedule_change", action="resume", name="tick")
            assert not_paused["message"] == "schedule tick was not paused"
            fired = await command(admin, "schedule_change", action="trigger", name="tick")
            assert fired["message"].startswith("schedule tick triggered: job tick@")
            job_id = fired["message"].rsplit(" ", 1)[1]
            assert fired["schedules"][0]["last_job"] == job_id
            skipped = fired
            while skipped["message"] == fired["message"]:  # the same millisecond: its own job
                skipped = await command(admin, "schedule_change", action="trigger", name="tick")
            assert "not triggered: 1 earlier firings still running" in skipped["message"]
            listed = await command(eyes, "schedule_query")
            assert listed["schedules"][0]["last_outcome"].startswith("skipped: 1 earlier")
            gone = await command(admin, "schedule_change", action="remove", name="tick")
            assert "schedules" not in gone and "removed" in gone["message"]
            missing = await command(admin, "schedule_change", action="remove", name="tick")
            assert missing["field"] == "name"
    assert "producer-1: schedule tick added" in caplog.text


async def test_a_firing_while_the_previous_runs_is_skipped_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    every = 0.2 * unit()
    async with BusServer(BusConfig(port=0)) as bus:
        async with client(bus) as worker:
            await registered(worker, "scheduler", name="w", tasks=["noop"], schedules=[tick(every)])
            job = (await recv(worker))["job"]
            await report(worker, "started", job["id"], job["attempt"])
            await wait_until(
                lambda: "schedule tick: firing at" in caplog.text and "skipped" in caplog.text,
                10 * every + 5 * unit(),
                "a skipped firing is logged naming the schedule",
            )
    assert "(max_instances 1)" in caplog.text


async def test_a_skipped_firing_is_a_skipped_event_to_every_monitor() -> None:
    every = 0.2 * unit()
    async with BusServer(BusConfig(port=0)) as bus:
        async with client(bus) as eyes, client(bus) as worker:
            await register(eyes, "monitor")
            schedule = tick(every, priority=7)
            await registered(worker, "scheduler", name="w", tasks=["noop"], schedules=[schedule])
            job = (await recv(worker))["job"]
            await report(worker, "started", job["id"], job["attempt"])  # and never finishes
            first = fired_at(job["id"])
            skipped: dict[str, Any] | None = None
            async with asyncio.timeout(10 * every + 5 * unit()):
                while skipped is None:
                    event = await recv(eyes)
                    if event["event"] == "skipped" and "max_instances" in event["error"]:
                        skipped = event
        assert skipped is not None
        when = fired_at(skipped["id"])
        assert when > first and abs((when - first) / every - round((when - first) / every)) < 1e-3
        _, _, iso = skipped["id"].partition("@")
        assert skipped["error"] == (
            f"schedule tick: firing at {iso} skipped: 1 earlier firings still running"
            " (max_instances 1)"
        )
        assert (skipped["state"], skipped["priority"], skipped["task"]) == ("skipped", 7, "noop")
        assert bus._hub.journal.get(skipped["id"]) is None, "a skipped firing is no job"


async def test_coalesced_firings_are_one_skipped_event_to_every_monitor() -> None:
    """On a virtual wall clock: 4 fire times fall due at once; the latest runs and the 3
    before it reach a monitor as one ``skipped`` event with the first one's id."""
    t0 = 1_800_000_000.0
    now = [t0]
    async with BusServer(BusConfig(port=0), wall_clock=lambda: now[0]) as bus:
        async with client(bus) as admin, client(bus) as eyes:
            await register(admin, "producer")
            await register(eyes, "monitor")
            await command(admin, "schedule_add", schedule=tick(10.0))
            now[0] = t0 + 45
            await command(admin, "schedule_query", query="list")  # re-arms: due at once
            events = [await recv(eyes), await recv(eyes)]
    skipped = next(e for e in events if e["event"] == "skipped")
    assert skipped["id"] == "tick@2027-01-15T08:00:10Z" and skipped["state"] == "skipped"
    assert skipped["error"] == (
        "schedule tick: 3 firings from 2027-01-15T08:00:10Z to 2027-01-15T08:00:30Z not run"
        " (coalesced: only the latest runs)"
    )
    assert any(e["id"] == "tick@2027-01-15T08:00:40Z" for e in events if e is not skipped)


async def test_schedules_survive_a_restart_and_an_invalid_declaration_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "journal.db"
    config = BusConfig(port=0, db=str(db))
    async with BusServer(config) as bus:
        async with client(bus) as worker:
            bad = {"name": "bad", "task": "noop", "every": 1, "tz": "Nowhere/Land"}
            daily = {"name": "daily", "task": "noop", "cron": "0 4 * * *"}
            alien = {"name": "alien", "task": "other", "every": 1}
            await registered(
                worker, "scheduler", name="w", tasks=["noop"], schedules=[bad, daily, alien]
            )
            async with client(bus) as admin:
                await register(admin, "producer")
                await command(admin, "schedule_change", action="pause", name="daily")
    assert "w: schedule bad refused: tz: unknown time zone 'Nowhere/Land'" in caplog.text
    assert "w: schedule alien refused: task: 'other' is not a task this scheduler serves" in (
        caplog.text
    )
    async with BusServer(config) as bus, client(bus) as admin:
        await register(admin, "producer")
        (daily_info,) = (await command(admin, "schedule_query"))["schedules"]
        assert daily_info["spec"]["name"] == "daily" and daily_info["paused"] is True


async def test_after_downtime_one_late_firing_runs_and_a_re_fire_finds_its_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On a virtual wall clock and a real journal: the bus is down for 4 periods, comes
    back and runs one firing (the rest logged as coalesced); firing that time again (its
    schedule row as it was before) finds the job instead of making a second one."""
    caplog.set_level(logging.INFO, "scheduler.bus.server")
    db = tmp_path / "journal.db"
    t0 = 1_800_000_000.0
    now = [t0]
    config = BusConfig(port=0, db=str(db))

    def bus() -> BusServer:
        return BusServer(config, wall_clock=lambda: now[0])

    async with bus() as first, client(first) as admin:
        await register(admin, "producer")
        await command(admin, "schedule_add", schedule=tick(10.0))
    now[0] = t0 + 45
    async with bus():
        pass  # opening it catches up
    late = "tick@2027-01-15T08:00:40Z"
    assert "tick: 3 firings from 2027-01-15T08:00:10Z to 2027-01-15T08:00:30Z not run" in (
        caplog.text
    )
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT id FROM jobs").fetchall() == [(late,)]
        conn.execute("UPDATE schedules SET next_fire = ?, due = ?", (t0 + 40, t0 + 40))
    conn.close()
    caplog.clear()
    async with bus():
        pass  # opening it fires 08:00:40 again
    assert "bus closed: 0 jobs accepted" in caplog.text, "the re-fire found the existing job"
    assert "refused" not in caplog.text
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT id FROM jobs").fetchall() == [(late,)]
    conn.close()
