"""Schedules are the admin's, and their firings' ids are the bus's (README, Security:
"Roles"), through a real bus with a token per role.

A scheduler token's ``register.schedules`` (what a worker's ``@task(every=...)`` sends)
may add schedules and update the ones declared before, but never change a schedule an
admin added: it is refused and logged (``schedule X refused: ...``). A producer may not
choose a job id with ``@`` or ``/`` (the ids of schedule firings, ``NAME@TIME``, and of
broadcast runs, ``ID/SCHEDULER``, which anyone can compute), so it cannot take the id of
an admin's next firing and so stop that firing from running.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

import pytest
from conftest import unit, wait_until
from test_bus import client, recv, registered, report

from scheduler.auth import Token, TokenTable
from scheduler.bus.config import BusConfig
from scheduler.bus.server import BusServer
from scheduler.policy.schedules import firing_id

TOKENS = TokenTable(
    (
        Token("ops", "admin", "t-admin"),
        Token("mallory", "producer", "t-mallory"),
        Token("runner", "scheduler", "t-scheduler"),
    )
)


async def request(ws: Any, frame: dict[str, Any]) -> dict[str, Any]:
    """Send ``frame``; return its reply (events and assignments are passed over)."""
    await ws.send(json.dumps(frame))
    reply = await recv(ws)
    while reply["type"] in ("event", "assign"):
        reply = await recv(ws)
    return reply


async def show(admin: Any, name: str) -> dict[str, Any]:
    """The bus's view of schedule ``name``."""
    shown = await request(admin, {"cmd": "schedule_query", "query": "show", "name": name})
    (info,) = shown["schedules"]
    return dict(info)


async def test_a_scheduler_token_cannot_replace_an_admins_schedule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "scheduler.bus.server")
    nightly = {"name": "nightly", "task": "noop", "cron": "0 3 * * *", "args": {"day": "-1"}}
    forged = {"name": "nightly", "task": "noop", "every": 1, "args": {"cmd": "anything"}}
    own = {"name": "poll", "task": "noop", "every": 60}
    async with BusServer(BusConfig(port=0, tokens=TOKENS, v1=False)) as bus:
        async with client(bus) as admin, client(bus) as runner:
            await registered(admin, "producer", token="t-admin")
            added = await request(admin, {"cmd": "schedule_add", "schedule": nightly})
            assert added["type"] == "schedules", added
            await registered(
                runner,
                "scheduler",
                token="t-scheduler",
                name="r",
                size=1,
                tasks=["noop"],
                schedules=[forged, own],
            )
            shown = await show(admin, "nightly")
            assert shown["spec"] == nightly, "the admin's schedule is unchanged"
            assert shown["origin"] == "added"
            declared = await show(admin, "poll")
            assert declared["spec"] == own and declared["origin"] == "declared", (
                "a scheduler still declares its tasks' schedules"
            )
    assert (
        "r: schedule nightly refused: name: schedule nightly was added by an admin"
        " (schedules add); a scheduler's declaration cannot change it" in caplog.text
    )
    assert "r: declared schedules poll" in caplog.text


async def test_a_tokenless_v1_register_cannot_replace_an_admins_schedule() -> None:
    """A v1 scheduler needs no token from loopback (by default): its declarations are
    held to the same rule."""
    nightly = {"name": "nightly", "task": "noop", "cron": "0 3 * * *", "args": {"day": "-1"}}
    forged = {"name": "nightly", "task": "noop", "every": 1, "args": {"cmd": "anything"}}
    async with BusServer(BusConfig(port=0, tokens=TOKENS)) as bus:
        async with client(bus) as admin, client(bus) as v1:
            await registered(admin, "producer", token="t-admin")
            added = await request(admin, {"cmd": "schedule_add", "schedule": nightly})
            assert added["type"] == "schedules", added
            register = {"cmd": "register", "type": "scheduler", "tasks": ["noop"]}
            await v1.send(json.dumps(register | {"schedules": [forged]}))
            await wait_until(lambda: bus.scheduler_names() != [], 5 * unit(), "v1 registers")
            assert (await show(admin, "nightly"))["spec"] == nightly


async def test_a_producer_cannot_take_the_id_of_an_admins_next_firing() -> None:
    every = 1.0
    async with BusServer(BusConfig(port=0, tokens=TOKENS, v1=False)) as bus:
        async with client(bus) as admin, client(bus) as runner, client(bus) as mallory:
            await registered(admin, "producer", token="t-admin")
            await registered(
                runner, "scheduler", token="t-scheduler", name="r", size=4, tasks=["noop", "sleep"]
            )
            await registered(mallory, "producer", token="t-mallory")
            target = (math.floor(time.time() / every) + 2) * every
            claim = {"runtime": 1, "job_id": firing_id("tick", target)}
            claimed = await request(mallory, {"cmd": "job_request", "payload": claim})
            assert claimed["type"] == "error" and claimed["field"] == "payload.job_id", claimed
            assert "'@' and '/' are reserved for schedule firings" in claimed["message"]
            run = {"runtime": 1, "job_id": "bc/r"}
            claimed = await request(mallory, {"cmd": "job_request", "payload": run})
            assert claimed["type"] == "error" and claimed["field"] == "payload.job_id", claimed
            schedule = {"name": "tick", "task": "noop", "every": every, "max_instances": 20}
            assert (await request(admin, {"cmd": "schedule_add", "schedule": schedule}))[
                "type"
            ] == "schedules"
            firings: list[str] = []

            async def run_jobs() -> None:
                while True:
                    frame = await recv(runner)
                    if frame["type"] != "assign":
                        continue
                    job = frame["job"]
                    if job.get("task") == "noop":
                        firings.append(job["id"])
                    await report(runner, "succeeded", job["id"], job["attempt"])

            async def beat() -> None:
                while True:
                    await runner.send('{"cmd": "heartbeat"}')
                    await asyncio.sleep(0.5)

            tasks = [asyncio.create_task(run_jobs()), asyncio.create_task(beat())]
            try:
                await wait_until(
                    lambda: firing_id("tick", target) in firings,
                    (target - time.time()) + 3 * every + 5 * unit(),
                    f"the admin's firing at the claimed time ran: {firings}",
                )
            finally:
                for task in tasks:
                    task.cancel()
