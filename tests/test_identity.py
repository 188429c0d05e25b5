"""A scheduler's name is its identity: a live name is refused to anyone who cannot prove,
with the secret its first registration was given, that it is the scheduler holding it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import BusProcess, Commands, unit, wait_until
from test_bus import barrier, client, recv, register, registered, report, submit, timeout

from scheduler.bus.server import BusServer
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobPayload
from scheduler.worker.client import RegistrationRefused, SchedulerClient, SchedulerConfig


async def test_a_forger_under_a_live_name_is_refused_and_its_report_ignored(
    bus: BusServer,
) -> None:
    async with client(bus) as producer, client(bus) as honest, client(bus) as monitor:
        await register(producer, "producer")
        await register(monitor, "monitor")
        await register(honest, "scheduler", name="payments")
        job_id = await submit(producer)
        assignment = (await recv(honest))["job"]
        async with client(bus) as mallory:
            await mallory.send(json.dumps({"cmd": "register", "type": "scheduler",
                                           "protocol": 2, "name": "payments"}))  # fmt: skip
            error = await recv(mallory)
            assert error == {"type": "error", "field": "name",
                             "message": "name payments is in use by another scheduler"}  # fmt: skip
            attempt = assignment["attempt"]
            forged = {"cmd": "report", "event": "succeeded", "id": job_id, "attempt": attempt,
                      "result": {"paid_to": "mallory"}}  # fmt: skip
            try:
                await mallory.send(json.dumps(forged))
            except Exception:
                pass  # closed already: either way nothing it sends is taken
            await asyncio.wait_for(mallory.wait_closed(), timeout())
            assert mallory.close_code == 1008
        await barrier(honest)
        info = bus._core.job(job_id)
        assert info is not None and info.state == "assigned" and info.holder == "payments"
        assert bus.scheduler_names() == ["payments"]
        await report(honest, "succeeded", job_id, assignment["attempt"], result={"paid_to": "us"})
        while (event := await recv(producer))["event"] != "succeeded":
            pass
        assert event["result"] == {"paid_to": "us"}


async def test_a_wrong_secret_is_refused_and_a_freed_name_gets_a_new_one(bus: BusServer) -> None:
    async with client(bus) as first:
        secret = (await registered(first, "scheduler", name="s1"))["secret"]
        async with client(bus) as guesser:
            await guesser.send(json.dumps({"cmd": "register", "type": "scheduler",
                                           "protocol": 2, "name": "s1",
                                           "secret": "0" * 64}))  # fmt: skip
            assert (await recv(guesser))["field"] == "name"
    await wait_until(lambda: bus.scheduler_names() == [], timeout(), "s1 leaves cleanly")
    async with client(bus) as later:  # the name is free again: anyone may take it
        reply = await registered(later, "scheduler", name="s1")
        assert reply["secret"] != secret and len(reply["secret"]) == 64


async def test_a_scheduler_client_whose_name_is_taken_stops_with_the_reason(
    bus: BusServer,
) -> None:
    async with client(bus) as holder:
        await register(holder, "scheduler", name="twin")
        scheduler = SchedulerClient(SchedulerConfig(bus_url=bus.url, name="twin"))
        with pytest.raises(RegistrationRefused, match="name twin is in use by another scheduler"):
            await asyncio.wait_for(scheduler.run(), 10 * unit())
        assert bus.scheduler_names() == ["twin"]


async def test_a_scheduler_client_reattaches_with_its_secret(bus: BusServer) -> None:
    scheduler = SchedulerClient(SchedulerConfig(bus_url=bus.url, name="solo", size=1))
    running = asyncio.create_task(scheduler.run())
    try:
        async with client(bus) as producer:
            await register(producer, "producer")
            job_id = await submit(producer, runtime=30)
            await wait_until(lambda: scheduler.executor.running == 1, timeout(), "job starts")
        secret = scheduler._secret
        assert secret is not None
        (connection,) = (c for c in bus._hub.registry if c.name == "solo")
        connection.ws.transport.abort()  # a broken connection: it comes back under its name
        await wait_until(
            lambda: any(c is not connection for c in bus._hub.registry), timeout(), "reattach"
        )
        assert bus.scheduler_names() == ["solo"] and scheduler._secret == secret
        info = bus._core.job(job_id)
        assert info is not None and (info.holder, info.attempt) == ("solo", 1)
    finally:
        scheduler.stop()
        await running


async def test_two_workers_with_one_name_the_second_exits_and_the_first_keeps_its_jobs(
    commands: Commands, tmp_path: Path
) -> None:
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    args = ("scheduler.test_scheduler", "--bus", bus.url, "--name", "twin", "-s", "2", "-t", "60")
    first = await commands.start(*args)
    async with ProducerClient(bus.url, token=bus.token("producer")) as producer:
        ids = [await producer.submit(JobPayload(priority=1, runtime=30)) for _ in range(2)]
        started: set[str] = set()
        async with asyncio.timeout(20 * unit()):
            async for event in producer.events():
                if event.event == "started":
                    started.add(event.id)
                if started == set(ids):
                    break
        second = await commands.start(*args)
        assert await asyncio.wait_for(second.wait(), 20 * unit()) == 1
        assert "name twin is in use by another scheduler" in commands.log_of(second)
        assert first.returncode is None
        watching = await producer.watch(ids)
        assert [(e.state, e.scheduler, e.attempt) for e in watching.jobs] == [
            ("running", "twin", 1),
            ("running", "twin", 1),
        ]
