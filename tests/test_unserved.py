"""A job of a task no connected scheduler serves is accepted with a warning that says so,
and a producer waiting for it keeps saying which jobs wait for a task nobody serves."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from conftest import Commands, unit, wait_until
from websockets.asyncio.client import ClientConnection, connect

from scheduler.bus.server import BusServer
from scheduler.policy.dispatch.decisions import SendReply
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.policy.dispatch.producers import unserved_warning
from scheduler.protocol import Accepted, JobPayload, SubmittedMany

WALL = 1_700_000_000.0
WARNING = 'no connected scheduler serves task "resize"; the job waits until one registers'


def first_reply(decisions: list[Any]) -> Any:
    assert isinstance(decisions[0], SendReply)
    return decisions[0].message


def test_the_core_warns_only_when_no_connected_scheduler_serves_the_task() -> None:
    core = Dispatcher(rng=random.Random(1), new_id=lambda: "j")
    resize = JobPayload(priority=1, task="resize")
    assert unserved_warning("resize") == WARNING
    reply = first_reply(core.submit(resize, 0.0, WALL))
    assert reply == Accepted("j", warning=WARNING)
    core.attach("s", size=1, tasks=["resize"], reports=True, now=0.0, wall=WALL)
    served = JobPayload(priority=1, task="resize", job_id="k")
    assert first_reply(core.submit(served, 0.0, WALL)) == Accepted("k")
    core.detach("s", clean=True, now=0.0, wall=WALL)
    many = first_reply(
        core.submit_many([JobPayload(priority=1, task="resize", job_id="m")], 0.0, WALL)
    )
    assert isinstance(many, SubmittedMany) and many.results[0].warning == WARNING


async def send_and_read(ws: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(frame))
    async with asyncio.timeout(5 * unit()):
        while True:
            reply = json.loads(await ws.recv())
            if reply["type"] != "event":
                assert isinstance(reply, dict)
                return reply


async def test_the_bus_reply_carries_the_warning_until_a_scheduler_serves_the_task(
    bus: BusServer,
) -> None:
    async with (
        connect(bus.url, compression=None) as producer,
        connect(bus.url, compression=None) as scheduler,
    ):
        register = {"cmd": "register", "type": "producer", "protocol": 2}
        assert (await send_and_read(producer, register))["type"] == "registered"
        job = {"cmd": "job_request", "payload": {"priority": 1, "task": "resize"}}
        accepted = await send_and_read(producer, job)
        assert accepted["type"] == "accepted" and accepted["warning"] == WARNING
        batch = {"cmd": "submit_many", "jobs": [{"priority": 1, "task": "resize"}]}
        many = await send_and_read(producer, batch)
        assert many["results"][0]["warning"] == WARNING
        await scheduler.send(
            json.dumps(
                {
                    "cmd": "register",
                    "type": "scheduler",
                    "protocol": 2,
                    "name": "s",
                    "tasks": ["resize"],
                }
            )
        )
        await wait_until(lambda: "s" in bus.scheduler_names(), 5 * unit(), "s registers")
        served = await send_and_read(producer, job)
        assert served["type"] == "accepted" and "warning" not in served


@pytest.mark.timeout(60)
async def test_the_producer_prints_the_warning_once_and_reminds_while_waiting(
    bus: BusServer, commands: Commands
) -> None:
    producer = await commands.start(
        "scheduler.producer",
        "--bus",
        bus.url,
        "--count",
        "2",
        "-p",
        "0",
        "--task",
        "add",
        "--args",
        '{"a": 1, "b": 2}',
        "--wait",
        "--remind-every",
        str(0.2 * unit()),
    )
    reminder = '2 jobs wait for task "add", which no connected scheduler serves'
    await wait_until(
        lambda: reminder in commands.log_of(producer), 20 * unit(), "the producer reminds"
    )
    assert commands.log_of(producer).count(unserved_warning("add")) == 1
    await commands.start(
        "scheduler.worker", "--tasks", "tests/sample_tasks.py", "--bus", bus.url, "--name", "w"
    )
    assert await asyncio.wait_for(producer.wait(), 30 * unit()) == 0
