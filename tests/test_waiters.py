"""The producer client's event waiters (scheduler/producer/waiters.py), without sockets:
each iterator its own queue, the backlog while none is open, the watches of handles."""

from __future__ import annotations

import asyncio
import gc

from scheduler.producer.waiters import EventWaiters
from scheduler.protocol import JobEvent


def event(job_id: str, time: float) -> JobEvent:
    return JobEvent(event="started", id=job_id, priority=5, state="running", time=time)


async def test_two_iterators_each_get_every_event_from_when_they_open() -> None:
    waiters = EventWaiters(backlog=100)
    first, second = waiters.stream(), waiters.stream()
    waiters.deliver(event("a", 1.0))  # nobody open yet: kept for the first iterator
    assert await anext(first) == event("a", 1.0)
    reading = asyncio.ensure_future(anext(second))
    await asyncio.sleep(0)  # the second iterator opens: it starts from here
    waiters.deliver(event("b", 2.0))
    assert await reading == event("b", 2.0)
    assert await anext(first) == event("b", 2.0)
    waiters.end("closed")
    assert [e async for e in first] == [] and [e async for e in second] == []


async def test_an_ended_iterator_gives_back_what_it_did_not_read() -> None:
    waiters = EventWaiters(backlog=100)
    for n in range(3):
        waiters.deliver(event("a", float(n)))
    stream = waiters.stream()
    assert (await anext(stream)).time == 0.0
    await stream.aclose()
    again = waiters.stream()
    assert [(await anext(again)).time for _ in range(2)] == [1.0, 2.0]
    await again.aclose()


async def test_the_backlog_keeps_the_newest_events() -> None:
    waiters = EventWaiters(backlog=2)
    for n in range(5):
        waiters.deliver(event("a", float(n)))
    waiters.end("closed")
    assert [e.time async for e in waiters.stream()] == [3.0, 4.0]


def test_a_watch_lives_as_long_as_a_handle_holds_it() -> None:
    waiters = EventWaiters(backlog=10)
    watch = waiters.watch_of("a")
    assert waiters.watch_of("a") is watch
    waiters.deliver(event("a", 1.0))
    waiters.deliver(event("b", 1.0))
    assert [e.id for e in watch.events] == ["a"]
    del watch
    gc.collect()
    assert waiters.watch_of("a").events == []
