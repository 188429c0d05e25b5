"""The bus's deadline timer: a timerfd the loop watches, so a delayed job's release and a
schedule's firing are not held to asyncio's whole-millisecond waits. No speed is asserted:
the tests check that it fires once, never early, can be moved and cancelled, and is armed
to the nanosecond (not rounded to a millisecond as a loop timer's wait is)."""

from __future__ import annotations

import asyncio
import re
import sys

import pytest
from conftest import unit

from scheduler.bus.deadline_timer import DeadlineTimer
from scheduler.bus.hub import Hub
from scheduler.bus.schedules import BusSchedules
from scheduler.bus.server import BusConfig, BusServer

linux = pytest.mark.skipif(sys.platform != "linux", reason="timerfd is Linux's")


def _armed_ns(fd: int) -> int:
    """What is left of the timerfd ``fd``'s time, in ns, as the kernel reports it."""
    with open(f"/proc/self/fdinfo/{fd}") as info:
        match = re.search(r"it_value: \((\d+), (\d+)\)", info.read())
    assert match is not None
    return int(match.group(1)) * 1_000_000_000 + int(match.group(2))


async def test_it_fires_once_and_never_before_its_time() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    timer = DeadlineTimer(lambda: fired.append(loop.time()))
    when = loop.time() + 0.02 * unit()
    timer.set(when)
    assert timer.when == when
    async with asyncio.timeout(5 * unit()):
        while not fired:
            await asyncio.sleep(0.005)
    await asyncio.sleep(0.02 * unit())
    timer.close()
    assert len(fired) == 1 and fired[0] >= when
    assert timer.when is None


async def test_setting_it_again_moves_it_and_cancel_drops_it() -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    first = DeadlineTimer(lambda: fired.append("moved"))
    first.set(loop.time() + 0.01 * unit())
    later = loop.time() + 0.05 * unit()
    first.set(later)
    dropped = DeadlineTimer(lambda: fired.append("cancelled"))
    dropped.set(loop.time() + 0.01 * unit())
    dropped.cancel()
    async with asyncio.timeout(5 * unit()):
        while not fired:
            await asyncio.sleep(0.005)
    assert loop.time() >= later
    await asyncio.sleep(0.03 * unit())
    first.close()
    dropped.close()
    assert fired == ["moved"]


async def test_a_time_already_past_fires_at_once_and_a_closed_timer_never() -> None:
    fired: list[int] = []
    timer = DeadlineTimer(lambda: fired.append(1))
    timer.set(0.0)
    async with asyncio.timeout(5 * unit()):
        while not fired:
            await asyncio.sleep(0.001)
    timer.close()
    timer.set(0.0)
    await asyncio.sleep(0.02 * unit())
    assert fired == [1] and timer.when is None


@linux
async def test_it_is_armed_to_the_nanosecond_on_a_timerfd() -> None:
    """A loop timer's wait is rounded up to the next millisecond; the timerfd holds the
    time as given: what is left of it is not a whole number of milliseconds."""
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer(lambda: None)
    timer.set(loop.time() + 10.0001234)
    try:
        assert timer.precise
        left = _armed_ns(timer._fd)
        assert 9_000_000_000 < left < 10_000_200_000
        assert left % 1_000_000 != 0
    finally:
        timer.close()
    assert not timer.precise, "closing it releases its descriptor"


@linux
async def test_the_bus_releases_delayed_jobs_and_fires_schedules_on_timerfds() -> None:
    """Both timers a job's start can wait for (the core's, for delayed jobs, and the
    schedules') are deadline timers on a timerfd, and the bus closes them."""
    async with BusServer(BusConfig(host="127.0.0.1", port=0)) as bus:
        hub: Hub = bus._hub
        schedules: BusSchedules = bus._schedules
        timers = [hub._timer, schedules._timer]
        for timer in timers:
            assert isinstance(timer, DeadlineTimer)
            timer.set(asyncio.get_running_loop().time() + 60)
            assert timer.precise
    assert all(timer._fd == -1 for timer in timers)
