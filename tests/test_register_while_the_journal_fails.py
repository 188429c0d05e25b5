"""A client that connects while the journal fails is answered at once when its
registration journals nothing (a producer, a monitor, a scheduler that reattaches with
its secret, a refused registration): the producer then hears why its submit is refused
instead of hanging until the disk recovers. A new scheduler's registration journals its
secret, so its reply waits for the journal like every frame.

Before the fix every ``registered`` reply waited behind the failing commit (found by the
README audit: ``producer``, ``monitor``, ``jobs`` hung silently during a disk-full
outage)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

from conftest import Commands, unit, wait_until
from test_bus import (
    bus_with,
    client,
    next_event,
    recv,
    refused_a_wrong_token,
    register,
    registered,
    request,
    submit,
)
from test_bus_journal_failure import POISON, poison_trigger, timeout

from scheduler.auth import Token, TokenTable
from scheduler.bus.server import BusServer


@asynccontextmanager
async def failing(bus: BusServer, db: Path) -> AsyncIterator[None]:
    """The journal of ``bus`` (file ``db``) fails every commit inside, and commits again
    after: a poison job's record cannot be stored until the trigger is dropped."""
    with closing(poison_trigger(db)) as trigger:
        async with client(bus) as producer:
            await register(producer, "producer")
            refused = await request(producer, {"cmd": "job_request", "payload": POISON})
            assert "submit refused" in refused["message"]
            assert bus.journal.failure is not None
        yield
        trigger.execute("DROP TRIGGER poison")


async def test_a_producer_that_connects_while_the_journal_fails_is_told_why(
    tmp_path: Path,
) -> None:
    db = tmp_path / "bus.db"
    async with bus_with(db=str(db)) as bus, failing(bus, db), client(bus) as late:
        await register(late, "producer")
        reply = await request(late, {"cmd": "job_request", "ref": 2, "payload": {}})
        assert reply["type"] == "error" and "submit refused" in reply["message"]


async def test_a_monitor_that_connects_while_the_journal_fails_is_registered_at_once(
    tmp_path: Path,
) -> None:
    """Registered during the outage, it hears every event once the journal commits."""
    db = tmp_path / "bus.db"
    async with bus_with(db=str(db)) as bus, client(bus) as monitor, client(bus) as producer:
        await register(producer, "producer")
        async with failing(bus, db):
            await register(monitor, "monitor")
        await wait_until(lambda: bus.journal.failure is None, timeout(), "journal recovered")
        job_id = await submit(producer)
        assert (await next_event(monitor, "accepted"))["id"] == job_id


async def test_a_refused_registration_is_answered_while_the_journal_fails(
    tmp_path: Path,
) -> None:
    db = tmp_path / "bus.db"
    tokens = TokenTable((Token("ops", "admin", "s3cret"),))
    async with bus_with(db=str(db), tokens=tokens) as bus:
        with closing(poison_trigger(db)):
            async with client(bus) as admin:
                await register(admin, "producer", token="s3cret")
                refused = await request(admin, {"cmd": "job_request", "payload": POISON})
                assert "submit refused" in refused["message"]
            await refused_a_wrong_token(bus)


async def test_a_scheduler_reattaching_is_answered_at_once_a_new_one_after_the_journal(
    tmp_path: Path,
) -> None:
    """A scheduler that takes over its name with its secret journals nothing: answered
    during the outage. A new scheduler's secret is journaled before its reply leaves."""
    db = tmp_path / "bus.db"
    async with bus_with(db=str(db)) as bus, client(bus) as first, client(bus) as producer:
        reply = await registered(first, "scheduler", name="s1", size=1, tasks=["sleep"])
        await register(producer, "producer")
        job_id = await submit(producer, task="sleep")
        assert (await recv(first))["job"]["id"] == job_id
        async with client(bus) as again, client(bus) as new:
            async with failing(bus, db):
                fields = {
                    "name": "s1",
                    "secret": reply["secret"],
                    "held": [{"id": job_id, "attempt": 1}],
                }
                back = await registered(again, "scheduler", size=1, tasks=["sleep"], **fields)
                assert (back["name"], back["secret"]) == ("s1", reply["secret"])
                await new.send(
                    '{"cmd": "register", "type": "scheduler", "protocol": 2, "name": "s2"}'
                )
                await wait_until(lambda: "s2" in bus.scheduler_names(), timeout(), "s2 known")
                (s2,) = (c for c in bus._hub.registry if c.name == "s2")
                assert bus._hub.gate.pending(s2) == 1, "its reply waits for its secret's commit"
            assert (await recv(new))["type"] == "registered"


async def test_the_producer_command_prints_the_refusal_while_the_journal_fails(
    tmp_path: Path, commands: Commands
) -> None:
    db = tmp_path / "bus.db"
    async with bus_with(db=str(db)) as bus, failing(bus, db):
        code, out = await commands.run(
            "scheduler.producer",
            "--bus",
            bus.url,
            "--count",
            "1",
            "--runtime",
            "1",
            timeout=15 * unit(),
        )
        printed = commands.log_of(commands.started[-1]) + out
    assert code == 1, printed
    assert "journal failing: poison refused by the test; submit refused" in printed
