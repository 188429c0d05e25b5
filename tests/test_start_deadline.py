"""A scheduler that is given jobs and starts none within the start deadline loses them:
the rule on a fake clock, then on a real bus with a real scheduler to take them over."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any

import pytest
from conftest import Commands, unit, wait_until
from websockets.asyncio.client import connect

from scheduler.bus.config import BusConfig, bus_rules
from scheduler.bus.server import BusServer
from scheduler.policy.dispatch.config import DispatchConfig
from scheduler.policy.dispatch.decisions import Decision, SendAssign, SendStop, StartOverdue
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.policy.job import Job
from scheduler.policy.start_deadline import StartWatch
from scheduler.producer.client import ProducerClient
from scheduler.protocol import Held, JobEvent, JobPayload, Report

WALL = 1_700_000_000.0
DEADLINE = 30.0


def core(**config: Any) -> Dispatcher:
    ids = iter(f"j{i}" for i in range(100))
    rules = DispatchConfig(lease=1000.0, start_deadline=DEADLINE, **config)
    return Dispatcher(rules, random.Random(1), new_id=lambda: next(ids))


def attach(d: Dispatcher, name: str, size: int = 4096, now: float = 0.0) -> list[Decision]:
    return d.attach(name, size=size, tasks=None, reports=True, now=now, wall=WALL)


def submit(d: Dispatcher, now: float = 0.0) -> list[Decision]:
    return d.submit(JobPayload(priority=5, runtime=1.0), now, WALL)


def assigned_to(decisions: list[Decision]) -> list[tuple[str, str]]:
    return [(d.scheduler, d.assignment.id) for d in decisions if isinstance(d, SendAssign)]


def started(d: Dispatcher, name: str, job_id: str, now: float) -> list[Decision]:
    return d.report(name, Report("started", job_id, 1), now, WALL)


def test_the_watch_runs_from_the_oldest_unstarted_assignment_or_the_last_progress() -> None:
    with pytest.raises(ValueError, match="start_deadline must be > 0 s"):
        StartWatch(0)
    watch = StartWatch(10.0)
    assert watch.due("a") is None and watch.next_deadline() is None
    watch.settled("nobody", "x")
    watch.assigned("a", "x", 1.0)
    watch.assigned("a", "y", 2.0)
    watch.assigned("b", "z", 5.0)
    assert watch.due("a") == 11.0 and watch.next_deadline() == 11.0
    watch.settled("a", "x")
    assert watch.due("a") == 12.0
    watch.progressed("a", 4.0)
    assert watch.due("a") == 14.0
    assert watch.overdue(13.9) == []
    assert watch.overdue(14.0) == ["a"]
    assert watch.overdue(15.0) == ["a", "b"]
    watch.forget("a")
    watch.forget("gone")
    assert watch.overdue(100.0) == ["b"]
    watch.settled("b", "z")
    assert watch.due("b") is None


def test_a_scheduler_that_starts_nothing_loses_its_jobs_and_gets_no_new_ones() -> None:
    d = core()
    attach(d, "lazy")
    assert assigned_to(submit(d) + submit(d)) == [("lazy", "j0"), ("lazy", "j1")]
    assert d.next_deadline() == DEADLINE
    assert d.tick(DEADLINE - 1, WALL) == []
    decisions = d.tick(DEADLINE, WALL)
    assert decisions[0] == StartOverdue("lazy", 2)
    stops = [(s.scheduler, s.stop.id, s.stop.reason) for s in decisions if isinstance(s, SendStop)]
    assert stops == [("lazy", "j0", "not started in time"), ("lazy", "j1", "not started in time")]
    assert d.backlog() == ["j0", "j1"]
    assert d.stats(DEADLINE, 1.0).bus.not_started == 2
    assert assigned_to(submit(d, DEADLINE)) == []  # not handed back to it at once
    assert assigned_to(attach(d, "good", size=4, now=31.0)) == [
        ("good", "j0"),
        ("good", "j1"),
        ("good", "j2"),
    ]
    assert assigned_to(attach(d, "lazy", now=32.0)) == []  # registered again: eligible
    assert assigned_to(submit(d, 33.0)) == [("lazy", "j3")]


def test_starting_something_moves_the_deadline_and_clears_a_stall() -> None:
    d = core(steal="off")
    attach(d, "a", size=3)
    submit(d), submit(d)
    started(d, "a", "j0", now=20.0)
    assert d.next_deadline() == 20.0 + DEADLINE
    assert d.tick(49.0, WALL) == []
    assert isinstance(d.tick(50.0, WALL)[0], StartOverdue)
    info = d.scheduler("a")
    assert info is not None and info.busy == 1 and info.pending == 0
    assert assigned_to(submit(d, 51.0)) == []
    # Progress: it works again, and takes the job that waited meanwhile.
    done = d.report("a", Report("succeeded", "j0", 1), 52.0, WALL)
    assert assigned_to(done) == [("a", "j1"), ("a", "j2")]
    assert assigned_to(submit(d, 53.0)) == [("a", "j3")]


def test_a_full_or_disconnected_scheduler_waits_without_losing_its_queue() -> None:
    d = core()
    attach(d, "full", size=1)
    submit(d), submit(d)
    started(d, "full", "j0", now=1.0)
    assert d.tick(31.0, WALL) == []  # j1 waits behind the running job
    assert d.next_deadline() == 61.0
    d.detach("full", clean=False, now=40.0, wall=WALL)
    d.report("full", Report("succeeded", "j0", 1), 41.0, WALL)
    decisions = d.tick(71.0, WALL)  # lost its connection: the lease decides, not this rule
    assert not any(isinstance(x, StartOverdue) for x in decisions)


def test_a_stalled_scheduler_does_not_steal() -> None:
    d = core()
    attach(d, "lazy", size=1)
    submit(d)
    d.tick(DEADLINE, WALL)
    attach(d, "busy", size=1, now=31.0)
    submit(d, 32.0)  # j1 waits at busy behind j0
    info = d.scheduler("lazy")
    assert info is not None and info.incoming == 0


async def test_a_real_bus_requeues_jobs_a_scheduler_never_starts(
    commands: Commands, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "scheduler.bus.server")
    config = BusConfig(host="127.0.0.1", port=0, rules=bus_rules(start_deadline=0.5 * unit()))
    async with (
        BusServer(config) as bus,
        connect(bus.url, compression=None) as lazy,
        ProducerClient(bus.url) as client,
    ):
        register = {"cmd": "register", "type": "scheduler", "protocol": 2, "name": "lazy"}
        await lazy.send(json.dumps(register | {"size": 4096}))
        ids = [await client.submit(JobPayload(priority=5, runtime=0.1)) for _ in range(2)]
        stopped: set[str] = set()
        async with asyncio.timeout(10 * unit()):
            while len(stopped) < 2:
                frame = json.loads(await lazy.recv())
                if frame["type"] == "stop":
                    assert frame["reason"] == "not started in time"
                    stopped.add(frame["id"])
        assert stopped == set(ids)
        assert "lazy: started none of its 2 assigned jobs within the start deadline" in caplog.text
        await commands.start("scheduler.test_scheduler", "--bus", bus.url, "--name", "good")
        finals: dict[str, JobEvent] = {}
        async with asyncio.timeout(20 * unit()):
            async for event in client.events():
                if event.event == "succeeded":
                    finals[event.id] = event
                    if len(finals) == 2:
                        break
        assert {e.scheduler for e in finals.values()} == {"good"}
        await wait_until(lambda: "good" in bus.scheduler_names(), 5 * unit(), "good stays")


def test_an_attempt_restored_unstarted_is_watched_from_the_restart() -> None:
    d = core()
    payload = JobPayload(priority=5, runtime=1.0)
    waiting = Job("w", payload, 0, WALL - 100, state="assigned", holder="a", attempt=1)
    d.restore([waiting], next_seq=1, now=100.0, wall=WALL)
    assert d.next_deadline() == 100.0 + DEADLINE
    d.attach("a", size=4, tasks=None, reports=True, held=[Held("w", 1)], now=101.0, wall=WALL)
    assert d.next_deadline() == 101.0 + DEADLINE  # registering is progress
    assert isinstance(d.tick(131.0, WALL)[0], StartOverdue)
