"""The frame gate holds frames until the journal commits, counting them per recipient."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

from conftest import wait_until

from scheduler.bus.gate import FrameGate, Recipient, Refusal
from scheduler.bus.journal import MEMORY, Journal, JournalError
from scheduler.bus.outbox import FrameOutbox


@dataclass
class FakeOutbox:
    """Records what the gate releases."""

    pushed: list[tuple[bytes, bool]] = field(default_factory=list)

    def push(self, frame: bytes, counted: bool = True) -> None:
        self.pushed.append((frame, counted))


@dataclass(eq=False)
class FakeRecipient:
    fake: FakeOutbox = field(default_factory=FakeOutbox)

    @property
    def outbox(self) -> FrameOutbox:
        return cast(FrameOutbox, self.fake)


def refused(
    recipient: Recipient, refusal: Refusal, error: JournalError, withdrawn: frozenset[str]
) -> None:
    raise AssertionError("nothing is refused while the journal commits")


async def test_frames_wait_for_the_commit_and_the_gate_counts_them() -> None:
    journal = Journal.open(MEMORY)
    gate = FrameGate(journal, refused)
    alice, bob = FakeRecipient(), FakeRecipient()
    gate.send(alice, b"straight through")
    assert alice.fake.pushed == [(b"straight through", True)] and gate.pending(alice) == 0
    gate.changed()
    gate.send(alice, b"a1", counted=False)
    gate.send(alice, b"a2")
    gate.send(bob, b"b1")
    assert (gate.pending(alice), gate.pending(bob)) == (2, 1)
    assert len(alice.fake.pushed) == 1
    await gate.released(alice)
    assert (gate.pending(alice), gate.pending(bob)) == (0, 0)
    assert alice.fake.pushed[1:] == [(b"a1", False), (b"a2", True)]
    assert bob.fake.pushed == [(b"b1", True)]
    await gate.drain()
    journal.close()


async def test_drain_drops_what_a_failing_journal_holds_and_resets_the_counts() -> None:
    journal = Journal.open(MEMORY)
    gate = FrameGate(journal, refused)
    alice = FakeRecipient()
    journal.close()  # every commit now fails
    gate.changed()
    gate.send(alice, b"held")
    assert gate.pending(alice) == 1
    await gate.drain()
    assert gate.pending(alice) == 0 and alice.fake.pushed == []


@dataclass
class HeldJournal:
    """A journal whose commits wait until the test ends them: failing unless told not to."""

    fails: bool = True
    committing: asyncio.Event = field(default_factory=asyncio.Event)
    end: asyncio.Event = field(default_factory=asyncio.Event)

    async def flush(self) -> None:
        self.committing.set()
        await self.end.wait()
        if self.fails:
            raise JournalError("test: commit failed")


async def test_a_refused_submit_takes_its_held_assignments_with_it() -> None:
    """The assignments of refused jobs and of their runs are dropped, whether they wait
    for the failed commit or came during it, and named with the refusal; other frames
    stay held."""
    journal = HeldJournal()
    calls: list[tuple[str, tuple[str, ...], frozenset[str]]] = []
    producer, scheduler, monitor = FakeRecipient(), FakeRecipient(), FakeRecipient()
    names = {id(producer): "producer", id(scheduler): "scheduler", id(monitor): "monitor"}

    def on_refused(
        recipient: Recipient, refusal: Refusal, error: JournalError, withdrawn: frozenset[str]
    ) -> None:
        calls.append((names[id(recipient)], refusal.job_ids, withdrawn))

    gate = FrameGate(cast(Journal, journal), on_refused)
    gate.changed()
    gate.send(producer, b"accepted j1", refusal=Refusal(("j1",), 1, ("j1/s",)))
    gate.send(producer, b"event j1", about="j1")
    gate.send(monitor, b"event j1", about="j1")
    gate.send(scheduler, b"assign j1/s", assigns="j1/s")
    gate.send(scheduler, b"assign j2", assigns="j2")
    await journal.committing.wait()
    gate.send(scheduler, b"assign j1", assigns="j1")  # queued at first, assigned meanwhile
    gate.send(scheduler, b"assign j3", assigns="j3")
    journal.end.set()
    await wait_until(lambda: bool(calls), 5.0, "the refusal")
    assert calls == [("producer", ("j1",), frozenset({"j1", "j1/s"}))]
    assert (gate.pending(producer), gate.pending(scheduler), gate.pending(monitor)) == (0, 2, 1)
    await gate.drain()
    assert scheduler.fake.pushed == [] and monitor.fake.pushed == []


async def test_a_refused_job_s_release_is_replaced_by_its_instead_frame() -> None:
    """Held or come during the failed commit, a withdrawn release goes out as its stop;
    a frame withdrawn without an ``instead`` is only dropped."""
    journal = HeldJournal()
    producer, scheduler = FakeRecipient(), FakeRecipient()
    refusals: list[frozenset[str]] = []
    gate = FrameGate(cast(Journal, journal), lambda *args: refusals.append(args[3]))
    gate.changed()
    gate.send(producer, b"accepted j1 j2 j3", refusal=Refusal(("j1", "j2", "j3"), 1))
    gate.send(scheduler, b"release j1", assigns="j1", instead=lambda: b"stop j1")
    await journal.committing.wait()
    gate.send(scheduler, b"release j2", assigns="j2", instead=lambda: b"stop j2")
    gate.send(scheduler, b"assign j3", assigns="j3")
    journal.end.set()
    await wait_until(lambda: bool(refusals), 5.0, "the refusal")
    assert refusals == [frozenset({"j1", "j2", "j3"})]
    assert scheduler.fake.pushed == [(b"stop j1", True), (b"stop j2", True)]
    assert gate.pending(scheduler) == 0
    await gate.drain()


async def test_a_stop_withdraws_the_release_or_assignment_held_before_it() -> None:
    """Held behind a commit (waiting, or in the commit in flight): a drop or a cancel
    withdraws the attempt's release or plain assignment (and says which was a plain
    assignment, never sent), a steal nothing; other recipients' frames and later frames
    stay."""
    journal = HeldJournal(fails=False)
    scheduler, other = FakeRecipient(), FakeRecipient()
    gate = FrameGate(cast(Journal, journal), refused)
    gate.changed()
    gate.send(scheduler, b"release j1", assigns="j1", release=True)
    gate.send(scheduler, b"assign j2", assigns="j2")
    gate.send(other, b"assign j1", assigns="j1")
    await journal.committing.wait()
    gate.send(scheduler, b"release j3", assigns="j3", release=True)
    gate.send(scheduler, b"assign j4", assigns="j4")
    gate.send(scheduler, b"release j5", assigns="j5", release=True)
    unsent = [
        gate.withdraw(scheduler, "j1", "cancel"),
        gate.withdraw(scheduler, "j2", "cancel"),
        gate.withdraw(scheduler, "j3", "drop"),
        gate.withdraw(scheduler, "j4", "drop"),
        gate.withdraw(scheduler, "j5", "steal"),
    ]
    assert unsent == [False, True, False, True, False]
    assert (gate.pending(scheduler), gate.pending(other)) == (1, 1)
    journal.end.set()
    await gate.released(scheduler)
    assert [frame for frame, _ in scheduler.fake.pushed] == [b"release j5"]
    assert other.fake.pushed == [(b"assign j1", True)]
    await gate.drain()
