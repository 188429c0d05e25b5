"""The reports a scheduler client has made and not yet sent, and its register frame's size.

While the bus is away every report waits, in order, in a :class:`ReportQueue` (the
client's outbox); once the bus confirms a new registration the queue is sent.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from typing import Final

import msgspec

from scheduler import codec, protocol_types
from scheduler.protocol import Held, Register, Report

log = logging.getLogger(__name__)

DEFAULT_OUTBOX_LIMIT: Final = 100_000
"""Reports kept while the bus is away, unless the config says otherwise."""
CLOSING_REPORTS: Final[frozenset[str]] = frozenset(
    {"succeeded", "failed", "timed_out", "evicted", "cancelled"}
)
"""Reports after which an attempt is no longer this scheduler's to run."""


class ReportQueue:
    """Reports on their way to the bus, oldest first; at most ``limit`` of them.

    Past the limit the oldest report is dropped with a warning: the bus then learns that
    attempt's end only by presuming it lost (it runs again elsewhere).
    """

    def __init__(self, limit: int = DEFAULT_OUTBOX_LIMIT) -> None:
        """An empty queue."""
        self.limit = limit
        self.dropped = 0
        """How many reports were dropped for want of room."""
        self._reports: deque[Report] = deque()

    def append(self, report: Report) -> None:
        """Add ``report`` last, dropping the oldest report if the queue is full."""
        if len(self._reports) >= self.limit:
            lost = self._reports.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.warning(
                    "outbox full (%d reports): dropped the oldest (%s of %s attempt %d); "
                    "%d dropped so far",
                    self.limit,
                    lost.event,
                    lost.id,
                    lost.attempt,
                    self.dropped,
                )
        self._reports.append(report)

    def popleft(self) -> Report:
        """Remove and return the oldest report; ``IndexError`` if empty."""
        return self._reports.popleft()

    def push_front(self, report: Report) -> None:
        """Put back first a report whose sending failed, so it goes out again first."""
        self._reports.appendleft(report)

    def first(self) -> Report:
        """The oldest report, left in place; ``IndexError`` if empty."""
        return self._reports[0]

    def awaits_end(self) -> bool:
        """Whether a ``started`` report waits here with no report ending its attempt
        after it."""
        running: set[tuple[str, int]] = set()
        for r in self._reports:
            if r.event == "started":
                running.add((r.id, r.attempt))
            elif r.event in CLOSING_REPORTS:
                running.discard((r.id, r.attempt))
        return bool(running)

    def purge(self, job_id: str, attempt: int) -> int:
        """Drop every report about ``attempt`` of ``job_id``; return how many there were."""
        kept = deque(r for r in self._reports if (r.id, r.attempt) != (job_id, attempt))
        purged = len(self._reports) - len(kept)
        self._reports = kept
        return purged

    def closed_attempts(self) -> list[Held]:
        """The attempts whose closing report waits here, as ``Held(done=True)``, oldest
        first. Changes nothing."""
        seen: dict[tuple[str, int], Held] = {}
        for r in self._reports:
            if r.event in CLOSING_REPORTS:
                seen.setdefault((r.id, r.attempt), Held(r.id, r.attempt, done=True))
        return list(seen.values())

    def __len__(self) -> int:
        """How many reports wait."""
        return len(self._reports)

    def __iter__(self) -> Iterator[Report]:
        """The waiting reports, oldest first."""
        return iter(self._reports)


def fit_register(register: Register, max_bytes: int = protocol_types.MAX_FRAME_BYTES) -> Register:
    """``register`` with ``held`` cut short, if needed, so that the frame fits ``max_bytes``.

    Entries are kept in order, so list running attempts first: one left out is presumed
    lost by the bus (and is stopped when it answers with a ``Stop`` or a new attempt).
    """
    if not register.held or len(codec.encode(register).encode()) <= max_bytes:
        return register
    empty = codec.encode(msgspec.structs.replace(register, held=[]))
    budget = max_bytes - len(empty.encode()) + 1  # the first entry needs no comma
    kept: list[Held] = []
    for held in register.held:
        budget -= len(msgspec.json.encode(held)) + 1
        if budget < 0:
            break
        kept.append(held)
    log.warning(
        "re-registering: %d of %d held attempts fit in one frame; the bus presumes the others lost",
        len(kept),
        len(register.held),
    )
    return msgspec.structs.replace(register, held=kept)
