"""Frames held back until the journal has made durable every change made before them.

While nothing waits for a commit, frames go straight to their outbox. Once a change is
queued in the journal, every frame waits, in order, for the group commit that covers it;
one commit task runs at a time, so all changes made while it commits share the next one.

A commit that fails (a full disk, an I/O error) stops nothing. The journal keeps the
unsaved changes queued and the gate keeps their frames held, retrying the commit with a
growing delay, so nobody hears of a change before it is on disk. Only the acknowledgments
of new jobs are refused at once: the bus answers their senders with an error and takes
the jobs back (:class:`Refusal`), so a producer learns that its submit failed instead of
waiting for the disk. The assignments of those jobs still held here are dropped, never
sent, so no scheduler runs a job whose producer was told it was refused. A held
assignment's release (:class:`~scheduler.protocol.Release`) dropped so is replaced by
the frame ``instead`` makes (a stop of that attempt).

Under load, a commit that only job events wait for may wait a little for more changes
to join it (:mod:`scheduler.policy.commit_window`); any other frame held starts it at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from scheduler.bus.journal import Journal, JournalError
from scheduler.bus.outbox import FrameOutbox
from scheduler.policy.commit_window import CommitWindow
from scheduler.protocol import StopKind

logger = logging.getLogger(__name__)

RETRY_FIRST_S: Final = 0.05
"""Delay before the first retry of a failed commit; it doubles on each failure."""

RETRY_MAX_S: Final = 1.0
"""Longest delay between two retries of a failing commit."""


class Recipient(Protocol):
    """A connection the gate holds frames for (compared by identity)."""

    @property
    def outbox(self) -> FrameOutbox:
        """Where its frames go once released."""
        ...


@dataclass(frozen=True)
class Refusal:
    """What to undo if the frame acknowledging new jobs cannot be sent: the jobs it
    accepted (to take back), the ``ref`` of the request (for the error reply) and the
    runs of those jobs that are broadcasts (taken back with them)."""

    job_ids: tuple[str, ...]
    ref: str | int | None
    runs: tuple[str, ...] = ()


@dataclass(slots=True)
class _Held:
    """A frame waiting for a commit; ``about`` names the job whose event it is, if any,
    ``assigns`` the job whose assignment (or ``release``) it carries, if any, and
    ``instead`` what goes out in its place if that job is refused. ``withdrawn``: a
    stop of that attempt came meanwhile (:meth:`FrameGate.withdraw`): never sent.
    ``event``: the frame is a job event (its commit may wait for the commit window)."""

    recipient: Recipient
    frame: bytes
    counted: bool
    refusal: Refusal | None
    about: str | None
    assigns: str | None = None
    instead: Callable[[], bytes] | None = None
    release: bool = False
    event: bool = False
    withdrawn: bool = False


OnRefused = Callable[[Recipient, Refusal, JournalError, frozenset[str]], None]
"""Called for each acknowledgment a failed commit refuses, with the commit's error and
the refused jobs (or runs) whose assignments were dropped unsent."""


def journal_problem(error: JournalError) -> str:
    """A short description of why the journal fails, for error replies:
    ``journal full: database or disk is full`` or ``journal failing: ...``."""
    cause = error.__cause__ if error.__cause__ is not None else error
    return f"journal {'full' if error.full else 'failing'}: {cause}"


class FrameGate:
    """Holds each frame until the journal commit covering the changes before it is done."""

    def __init__(
        self,
        journal: Journal,
        on_refused: OnRefused,
        window: CommitWindow | None = None,
        held_attempts: Callable[[], int] | None = None,
    ) -> None:
        """Gate frames on ``journal``'s commits. ``window`` (None: none) lets a commit that
        only job events wait for wait; ``held_attempts`` says how many attempts the
        schedulers hold (the window applies only to more than one)."""
        self._journal = journal
        self._on_refused = on_refused
        self._window = CommitWindow(0.0) if window is None else window
        self._held_attempts = held_attempts or _none
        self._hurry: asyncio.Future[None] | None = None
        """Set while a commit waits for the window: done once it may start."""
        self._held: list[_Held] = []
        self._flying: list[_Held] = []
        """The frames waiting for the commit in flight."""
        self._pending: dict[Recipient, int] = {}
        self._dirty = False
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._failures = 0
        self._failing_since = 0.0
        self._stopped = False

    @property
    def failing(self) -> bool:
        """Whether the latest commit failed (frames are held until a retry succeeds)."""
        return self._failures > 0

    @property
    def holding(self) -> bool:
        """Whether a frame sent now would wait for a commit."""
        return self._task is not None

    def pending(self, recipient: Recipient) -> int:
        """How many frames for ``recipient`` wait for a commit."""
        return self._pending.get(recipient, 0)

    def changed(self) -> None:
        """Note that a change was queued in the journal: later frames wait for its commit."""
        if self._stopped:
            return
        self._dirty = True
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def send(
        self,
        recipient: Recipient,
        frame: bytes,
        counted: bool = True,
        refusal: Refusal | None = None,
        about: str | None = None,
        assigns: str | None = None,
        instead: Callable[[], bytes] | None = None,
        release: bool = False,
        event: bool = False,
    ) -> None:
        """Push ``frame`` to ``recipient`` now, or once the commits before it are done
        (``counted``: see :meth:`FrameOutbox.push`). A frame with a ``refusal`` is
        refused instead if its commit fails, and then the recipient's frames ``about``
        the refused jobs (their events) are dropped, and every frame that ``assigns``
        one of them or their runs (to any recipient) too: the frame ``instead`` makes, if
        given, is sent in its place (made only then: refusals are rare). ``release``: the
        frame releases a held assignment (see :meth:`withdraw`). ``event``: the frame is
        a job event, which may wait for the commit window; any other frame ends the wait."""
        if self._task is None:
            if not self._stopped:
                recipient.outbox.push(frame, counted)
            return
        self._pending[recipient] = self._pending.get(recipient, 0) + 1
        held = _Held(recipient, frame, counted, refusal, about, assigns, instead, release, event)
        self._held.append(held)
        if not event and self._hurry is not None and not self._hurry.done():
            self._hurry.set_result(None)

    def withdraw(self, recipient: Recipient, job_id: str, kind: StopKind) -> bool:
        """A stop of ``kind`` for ``job_id`` is about to be sent to ``recipient``: never
        send the frames still held for it that would start the attempt first. A release
        goes for a ``drop`` or a ``cancel`` (the scheduler then ends the held attempt
        unstarted, and confirms a cancel); a plain assignment goes too, and then the
        scheduler never hears of the attempt. A steal withdraws nothing: the scheduler
        answers it once the attempt starts. Returns whether a plain assignment went."""
        if kind == "steal":
            return False
        unsent = False
        for held in (*self._flying, *self._held):
            if held.recipient is recipient and held.assigns == job_id and not held.withdrawn:
                held.withdrawn = True
                self._release(recipient)
                unsent = unsent or not held.release
        return unsent

    async def released(self, recipient: Recipient) -> None:
        """Wait until no frame for ``recipient`` waits for a commit."""
        while self.pending(recipient) and self._task is not None:
            if self._wake is None:
                self._wake = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._wake)

    async def drain(self) -> None:
        """Wait until every queued change is committed and every held frame released, or
        until a commit fails; then stop: frames still held are dropped, never sent."""
        while self._task is not None and not self.failing:
            await asyncio.wait((self._task,), timeout=RETRY_MAX_S)
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait((self._task,))
        self._pending.clear()
        self._held.clear()

    async def _run(self) -> None:
        try:
            while self._dirty or self._held:
                if self._dirty:
                    await self._linger()
                batch, self._held = self._held, []
                self._flying = batch
                committed = not self._dirty or await self._commit(batch)
                self._flying = []
                if not committed:
                    continue
                for held in batch:
                    if held.withdrawn:
                        continue
                    self._release(held.recipient)
                    held.recipient.outbox.push(held.frame, held.counted)
                self._wake_waiters()
        finally:
            self._task = None
            self._flying = []
            self._wake_waiters()

    async def _commit(self, batch: list[_Held]) -> bool:
        """Commit what the journal has queued; on failure, refuse the batch's
        acknowledgments, hold the rest again and wait before the next try."""
        self._dirty = False
        self._window.started(asyncio.get_running_loop().time())
        try:
            await self._journal.flush()
        except JournalError as exc:
            self._held = self._refuse(batch, exc) + self._held
            self._dirty = True
            self._wake_waiters()
            await asyncio.sleep(self._failed(exc))
            return False
        if self._failures:
            logger.warning(
                "the journal commits again after %.1f s and %d failed tries; frames held"
                " meanwhile go out now",
                time.monotonic() - self._failing_since,
                self._failures,
            )
            self._failures = 0
        return True

    async def _linger(self) -> None:
        """Wait as long as the commit window asks before the next commit, or until a frame
        that is not a job event is held."""
        loop = asyncio.get_running_loop()
        urgent = not all(held.event for held in self._held)
        delay = self._window.wait(loop.time(), urgent=urgent, held=self._held_attempts())
        if delay <= 0:
            return
        hurry = self._hurry = loop.create_future()
        timer = loop.call_later(delay, _settle, hurry)
        try:
            await hurry
        finally:
            timer.cancel()
            self._hurry = None

    def _refuse(self, batch: list[_Held], error: JournalError) -> list[_Held]:
        """Answer each acknowledgment in ``batch`` with a refusal, drop its sender's
        events of the refused jobs and every held assignment of them (in ``batch`` or
        held since); return the rest of ``batch``."""
        refusals = [(held, held.refusal) for held in batch if held.refusal is not None]
        refused = {
            (id(held.recipient), job_id)
            for held, refusal in refusals
            for job_id in (*refusal.job_ids, *refusal.runs)
        }
        refused_jobs = {job_id for _, job_id in refused}
        withdrawn: set[str] = set()
        kept = []
        for held in batch:
            if held.withdrawn:
                continue
            if held.assigns in refused_jobs:
                self._drop_refused(held, withdrawn)
            elif held.refusal is None and (id(held.recipient), held.about) not in refused:
                kept.append(held)
                continue
            self._release(held.recipient)
        later = []
        for held in self._held:
            if held.withdrawn:
                continue
            if held.assigns in refused_jobs:
                self._drop_refused(held, withdrawn)
                self._release(held.recipient)
            else:
                later.append(held)
        self._held = later
        for held, refusal in refusals:
            ids = withdrawn.intersection((*refusal.job_ids, *refusal.runs))
            self._on_refused(held.recipient, refusal, error, frozenset(ids))
        return kept

    @staticmethod
    def _drop_refused(held: _Held, withdrawn: set[str]) -> None:
        """Drop the assignment of a refused job that ``held`` carries, sending its
        ``instead`` frame now."""
        assert held.assigns is not None
        withdrawn.add(held.assigns)
        if held.instead is not None:
            held.recipient.outbox.push(held.instead(), held.counted)

    def _failed(self, error: JournalError) -> float:
        """Log the failure (once until the journal recovers); return the retry delay."""
        if not self._failures:
            self._failing_since = time.monotonic()
            logger.error(
                "%s; new submits are refused and other frames held until it commits again",
                error,
            )
        self._failures += 1
        delay: float = RETRY_FIRST_S * 2.0 ** min(self._failures - 1, 10)
        return min(RETRY_MAX_S, delay)

    def _release(self, recipient: Recipient) -> None:
        """Count one frame for ``recipient`` no longer held."""
        left = self._pending[recipient] - 1
        if left:
            self._pending[recipient] = left
        else:
            del self._pending[recipient]

    def _wake_waiters(self) -> None:
        if self._wake is not None:
            self._wake.set_result(None)
            self._wake = None


def _none() -> int:
    """No attempts held: the window never applies."""
    return 0


def _settle(future: asyncio.Future[None]) -> None:
    """End the window's wait (unless a frame ended it already)."""
    if not future.done():
        future.set_result(None)
