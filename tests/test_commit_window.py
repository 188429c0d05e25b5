"""The commit window: under load, a commit that only job events wait for waits for more
reports to share it; acknowledgments, assignments and stops never wait. The rule on a
fake clock, then the frame gate on a real journal file, then a real bus."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from conftest import unit, wait_until
from test_bus import (
    bus_with,
    client,
    recv,
    register,
    registered,
    report,
    submit_skipping_events,
)
from test_gate import FakeRecipient, refused

from scheduler.bus.config import BusConfig
from scheduler.bus.gate import FrameGate
from scheduler.bus.journal import Journal
from scheduler.bus.server import BusServer
from scheduler.policy.commit_window import CommitWindow
from scheduler.policy.job import Job
from scheduler.protocol import JobPayload
from scheduler.protocol_types import JobState

WINDOW = 1.0
"""The longest window, so that a frame that ends it early is seen doing so."""


def test_only_events_under_load_wait_out_the_window_after_a_commit() -> None:
    window = CommitWindow(0.5)
    assert window.wait(10.0, urgent=False, held=5) == 0.0, "no commit yet: nothing to wait for"
    window.started(10.0)
    assert window.wait(10.1, urgent=False, held=5) == pytest.approx(0.4)
    assert window.wait(10.1, urgent=True, held=5) == 0.0, "an acknowledgment never waits"
    assert window.wait(10.1, urgent=False, held=1) == 0.0, "one job at a time never waits"
    assert window.wait(10.6, urgent=False, held=5) == 0.0, "after a quiet spell: at once"


def test_no_window_never_waits() -> None:
    window = CommitWindow(0.0)
    window.started(10.0)
    assert window.wait(10.0, urgent=False, held=100) == 0.0


@pytest.mark.parametrize("bad", [-0.001, 1.5, math.nan, math.inf])
def test_a_window_outside_0_to_1_s_is_refused_naming_the_field(bad: float) -> None:
    with pytest.raises(ValueError, match="commit_window must be from 0 to 1 s"):
        CommitWindow(bad)
    with pytest.raises(ValueError, match="commit_window"):
        BusConfig(commit_window=bad)


def job(job_id: str, state: JobState) -> Job:
    payload = JobPayload(priority=5, runtime=1.0, job_id=job_id)
    return Job(job_id, payload, 0, 1.0, state=state)


async def acknowledged(journal: Journal, gate: FrameGate, alice: FakeRecipient) -> float:
    """Commit job ``a``'s acceptance for an acknowledgment (which waits for no window);
    return the loop time before that commit started."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    journal.save([job("a", "queued")])
    gate.changed()
    gate.send(alice, b"accepted")
    await asyncio.wait_for(gate.released(alice), 5 * unit())
    return started


async def test_events_under_load_wait_out_the_window_and_share_its_commit(
    tmp_path: Path,
) -> None:
    journal = Journal.open(str(tmp_path / "bus.db"))
    gate = FrameGate(journal, refused, CommitWindow(0.3), lambda: 2)
    alice = FakeRecipient()
    loop = asyncio.get_running_loop()
    first = await acknowledged(journal, gate, alice)
    assert journal.commits == 1
    for job_id in ("a", "b"):
        journal.save([job(job_id, "running")])
        gate.changed()
        gate.send(alice, f"{job_id} started".encode(), event=True)
    await asyncio.wait_for(gate.released(alice), 5 * unit())
    assert loop.time() - first >= 0.3, "the events waited out the window"
    assert journal.commits == 2, "both reports shared one commit"
    assert [frame for frame, _ in alice.fake.pushed] == [b"accepted", b"a started", b"b started"]
    await gate.drain()
    journal.close()


async def test_a_frame_that_is_not_an_event_ends_the_wait(tmp_path: Path) -> None:
    journal = Journal.open(str(tmp_path / "bus.db"))
    gate = FrameGate(journal, refused, CommitWindow(WINDOW), lambda: 2)
    alice, bob = FakeRecipient(), FakeRecipient()
    loop = asyncio.get_running_loop()
    first = await acknowledged(journal, gate, alice)
    journal.save([job("a", "running")])
    gate.changed()
    gate.send(alice, b"a started", event=True)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(gate.released(alice), 0.1)
    gate.send(bob, b"assign b")
    await asyncio.wait_for(gate.released(bob), 5 * unit())
    assert loop.time() - first < WINDOW, "the assignment did not wait for the window"
    assert alice.fake.pushed[-1] == (b"a started", True) and bob.fake.pushed == [
        (b"assign b", True)
    ]
    assert journal.commits == 2
    await gate.drain()
    journal.close()


async def test_with_one_attempt_held_events_never_wait(tmp_path: Path) -> None:
    journal = Journal.open(str(tmp_path / "bus.db"))
    gate = FrameGate(journal, refused, CommitWindow(WINDOW), lambda: 1)
    alice = FakeRecipient()
    loop = asyncio.get_running_loop()
    first = await acknowledged(journal, gate, alice)
    journal.save([job("a", "running")])
    gate.changed()
    gate.send(alice, b"a started", event=True)
    await asyncio.wait_for(gate.released(alice), 5 * unit())
    assert loop.time() - first < WINDOW
    await gate.drain()
    journal.close()


async def test_a_real_bus_commits_the_reports_of_several_jobs_together(tmp_path: Path) -> None:
    async with (
        bus_with(db=str(tmp_path / "bus.db"), commit_window=WINDOW) as bus,
        client(bus) as producer,
        client(bus) as scheduler,
    ):
        await register(producer, "producer")
        await registered(scheduler, "scheduler", name="s1", size=2)
        ids = [await submit_skipping_events(producer, runtime=30) for _ in range(2)]
        assert sorted([(await recv(scheduler))["job"]["id"] for _ in ids]) == sorted(ids)
        before = bus.journal.commits
        await report(scheduler, "started", ids[0], 1)
        await wait_until(lambda: running(bus, ids[0]), 5 * unit(), "the bus heard the first start")
        await report(scheduler, "started", ids[1], 1)
        started: set[str] = set()
        while len(started) < len(ids):
            frame = await recv(producer)
            if frame.get("event") == "started":
                started.add(frame["id"])
        assert bus.journal.commits == before + 1, "the second start joined the first's commit"

        loop = asyncio.get_running_loop()
        await report(scheduler, "succeeded", ids[0], 1)
        sent = loop.time()
        third = await submit_skipping_events(producer, runtime=30)
        assert loop.time() - sent < WINDOW / 2, "the acknowledgment did not wait for the window"
        assert third not in ids
        assert bus.journal.commits == before + 2, "the end of the job shared the submit's commit"


def running(bus: BusServer, job_id: str) -> bool:
    """Whether ``bus`` has queued job ``job_id``'s move to running for its journal."""
    job = bus.journal.get(job_id)
    return job is not None and job.state == "running"
