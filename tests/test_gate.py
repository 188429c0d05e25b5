"""The frame gate holds frames until the journal commits, counting them per recipient."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

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


def refused(recipient: Recipient, refusal: Refusal, error: JournalError) -> None:
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
