"""The bus's state between its connections, and how it carries out the core's decisions.

:class:`Hub` holds the dispatch core, the journal and its frame gate, the registered
connections (:class:`~scheduler.bus.registry.Registry`) and the subscriptions
(:class:`~scheduler.bus.fanout.Fanout`). :meth:`Hub.apply` journals what the core
changed, then carries out its decisions in order: assignments, stops, replies and
events become frames that wait in the gate for that commit. Leases, retry delays and
v1 expiries are the core's timers: the hub asks it for the next deadline and sets one
loop timer for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable, Coroutine, Iterable, Sequence
from functools import partial
from typing import Any, Final

from scheduler.bus.config import BusConfig
from scheduler.bus.connection import Connection
from scheduler.bus.deadline_timer import DeadlineTimer
from scheduler.bus.fanout import Fanout
from scheduler.bus.garbage import paused_gc
from scheduler.bus.gate import FrameGate, Recipient, Refusal, journal_problem
from scheduler.bus.journal import MEMORY, Journal, JournalError
from scheduler.bus.metrics import BusMetrics, LiveFigures
from scheduler.bus.registry import Registry
from scheduler.codec import encode, encode_bytes, encode_v1_payload
from scheduler.ids import short_id
from scheduler.policy.commit_window import CommitWindow
from scheduler.policy.dispatch.decisions import (
    Decision,
    EmitEvent,
    Ignored,
    LeaseExpired,
    Requeued,
    SendAssign,
    SendReply,
    SendStop,
    StartOverdue,
)
from scheduler.policy.dispatch.dependencies import restore_ids
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.protocol import (
    Accepted,
    Assign,
    Assignment,
    BusMessage,
    Error,
    Release,
    Restarting,
    Stop,
    SubmittedMany,
)
from scheduler.protocol_types import FINAL_EVENTS

# The bus's log lines keep the one logger name its users and tests filter on.
logger = logging.getLogger("scheduler.bus.server")

CLOSE_LEASE_EXPIRED: Final = 4000
"""Close code for a scheduler connection that stayed silent past its lease."""

FLUSH_TIMEOUT_S: Final = 5.0
"""How long a refused client's error reply may take to leave before the connection closes."""

UNSENT_CANCEL: Final = "cancelled before its assignment left the bus"
"""The error of a job cancelled while its assignment still waited for a commit."""


class Hub:
    """The core, the journal, the connections and subscriptions of one bus."""

    def __init__(
        self,
        config: BusConfig,
        clock: Callable[[], float],
        wall: Callable[[], float],
        rng: random.Random | None,
    ) -> None:
        """Set up the core; nothing is opened until :meth:`open`."""
        self.config = config
        self.clock = clock
        """The monotonic time the core sees."""
        self.wall = wall
        """The epoch time stamped on jobs."""
        self.core = Dispatcher(config.rules, rng, new_id=new_id)
        self.registry = Registry(self.core)
        self.fanout = Fanout()
        self._journal: Journal | None = None
        self._gate: FrameGate | None = None
        self._timer = DeadlineTimer(self._on_timer)
        self._timer_at = 0.0
        self._background: set[asyncio.Task[Any]] = set()
        self._unsent_cancels: list[str] = []
        """Jobs cancelled while their assignment still waited for a commit (see _stop)."""
        self._started_at = clock()
        self.metrics = BusMetrics(self.live_figures, self.core.tracks)
        """The bus's Prometheus metrics, fed by :meth:`apply` and the journal's commits."""

    def live_figures(self) -> LiveFigures:
        """What the metrics read at scrape time: jobs by state and task, schedulers
        connected, steals."""
        schedulers = sum(1 for c in self.registry if c.role == "scheduler")
        return LiveFigures(self.core.tally(), schedulers, self.core.steals)

    @property
    def started_at(self) -> float:
        """When (:attr:`clock` time) the journal was opened (or the hub made, before)."""
        return self._started_at

    @property
    def journal(self) -> Journal:
        """The open journal (once opened)."""
        if self._journal is None:
            raise RuntimeError("the bus is not started")
        return self._journal

    @property
    def gate(self) -> FrameGate:
        """The gate every frame waits in for the journal (once opened)."""
        if self._gate is None:
            raise RuntimeError("the bus is not started")
        return self._gate

    def open(self) -> tuple[object, ...]:
        """Open the journal and take back its jobs; return the log line that says so."""
        store = self.config.store
        journal = self._journal = (
            Journal.open(self.config.db)
            if store is None
            else Journal.open_store(store, epoch=self.config.leader_epoch)
        )
        journal.on_commit = self.metrics.journal_committed
        window = CommitWindow(self.config.commit_window)
        self._gate = FrameGate(journal, self._refused, window, self.core.held_attempts)
        with paused_gc():
            jobs = journal.load()
            promised = journal.restart_promise()
            wall = self.wall()
            stored = {i: job for i in restore_ids(jobs) if (job := journal.get(i)) is not None}
            self.core.restore(
                jobs, journal.next_seq(), self.clock(), wall, promised_until=promised, stored=stored
            )
        self.registry.restore_secrets(journal)
        held = [job for job in jobs if job.holder is not None]
        self._started_at = self.clock()
        self.arm()
        return (
            "journal %s: %d jobs to finish (%d queued, %d held by %d schedulers that have"
            " %.1f s to come back)",
            journal.path,
            len(jobs),
            len(jobs) - len(held),
            len(held),
            len({job.holder for job in held}),
            max(self.config.rules.lease, (promised or 0.0) - wall),
        )

    def stop(self) -> None:
        """Cancel the core's timer and every background task."""
        self._timer.close()
        for task in self._background:
            task.cancel()

    def close_journal(self) -> None:
        """Commit and close the journal (if open), logging a failure."""
        if self._journal is None:
            return
        try:
            self._journal.close()
        except JournalError as exc:
            logger.error("closing the journal failed; unsaved changes are lost: %s", exc)

    async def promise_restart(self) -> None:
        """Journal the restart promise, then tell every v2 scheduler how long to keep its
        jobs; with no grace (or a journal that cannot record it) promise nothing."""
        grace = self.config.restart_grace
        if self.journal.path == MEMORY:
            return  # the jobs die with this bus: nobody would honour a promise
        try:
            self.journal.promise_restart(self.wall() + grace if grace > 0 else None)
        except JournalError as exc:
            logger.error("cannot journal the restart promise; schedulers keep their lease: %s", exc)
            return
        if grace <= 0:
            return
        told = [c for c in self.registry if c.role == "scheduler" and c.protocol == 2]
        for client in told:
            client.send(Restarting(keep_s=grace))
        await self.gate.drain()
        await asyncio.gather(*(client.outbox.flush(FLUSH_TIMEOUT_S) for client in told))
        logger.info(
            "shutting down for a restart: %d schedulers keep their jobs for %g s", len(told), grace
        )

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` in the background until it ends or :meth:`stop`."""
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def subscribe(self, client: Connection, job_id: str) -> None:
        """Send ``client`` the events of ``job_id`` if it may have more (monitors get every
        event and v1 clients none)."""
        if self.core.tracks(job_id):
            self.fanout.subscribe(client, job_id)

    def subscribe_submitted(
        self, client: Connection, job_ids: Iterable[str], decisions: Sequence[Decision]
    ) -> None:
        """Send ``client`` the events of the jobs its submit accepted (``decisions`` are
        the submit's, not yet carried out): each one the core tracks, and each one that
        ended inside the submit (skipped because a dependency had already failed, expired
        because its time was past its grace), whose final event is among ``decisions``.
        A job that was final before the submit (an existing id) has no more events."""
        ended: frozenset[str] | None = None
        for job_id in job_ids:
            if not self.core.tracks(job_id):
                if ended is None:
                    ended = _ended_in(decisions)
                if job_id not in ended:
                    continue
            self.fanout.subscribe(client, job_id)

    # --- decisions -------------------------------------------------------------------

    def apply(self, decisions: Iterable[Decision], requester: Connection | None = None) -> None:
        """Journal what the core changed, carry out its decisions in order (their frames
        wait for that journal commit), and re-arm the core's timer."""
        changed, deleted = self.core.take_changes()
        if changed or deleted:
            self.journal.save(changed)
            self.journal.delete(deleted)
            self.gate.changed()
            for job_id in deleted:
                self.fanout.forget_job(job_id)
        for decision in decisions:
            self._carry_out(decision, requester)
        while self._unsent_cancels:
            job_id = self._unsent_cancels.pop(0)
            logger.info("job %s: %s", short_id(job_id), UNSENT_CANCEL)
            self.apply(self.core.withdraw(job_id, self.clock(), self.wall(), UNSENT_CANCEL))
        self.arm()

    def _carry_out(self, decision: Decision, requester: Connection | None) -> None:
        if isinstance(decision, EmitEvent):
            self.fanout.publish(decision.event, requester, self.gate)
            self.metrics.event(decision.event, self.clock())
        elif isinstance(decision, SendAssign):
            self._assign(decision)
        elif isinstance(decision, SendStop):
            self._stop(decision)
        elif isinstance(decision, SendReply):
            self._reply(decision, requester)
        else:
            self._note(decision)

    def _reply(self, reply: SendReply, requester: Connection | None) -> None:
        """Answer a v2 requester; a v1 producer is never sent anything, so its refused
        job is logged."""
        if requester is None:
            return
        if requester.protocol == 2:
            requester.send(reply.message, _refusal_of(reply.message))
        elif isinstance(reply.message, Error):
            logger.warning("%s: refused job: %s", requester.outbox.label, reply.message.message)

    def _note(self, decision: Requeued | Ignored | LeaseExpired | StartOverdue) -> None:
        """Log a decision that sends nothing; a lease that expired on an open connection
        closes it."""
        if isinstance(decision, Requeued):
            logger.debug(
                "job %s: taken back from %s after attempt %d: %s",
                short_id(decision.job_id),
                decision.scheduler,
                decision.attempt,
                decision.reason,
            )
        elif isinstance(decision, Ignored):
            logger.warning(
                "%s: ignored report about job %s: %s",
                decision.scheduler,
                short_id(decision.job_id),
                decision.reason,
            )
        elif isinstance(decision, StartOverdue):
            logger.warning(
                "%s: started none of its %d assigned jobs within the start deadline (%g s):"
                " they are requeued, and it gets no new work until it starts one",
                decision.scheduler,
                decision.jobs,
                self.config.rules.start_deadline,
            )
        else:
            logger.info("%s: lease expired; %d jobs taken back", decision.scheduler, decision.jobs)
            if decision.connected:
                client = self.registry.pop(decision.scheduler)
                self.spawn(client.ws.close(CLOSE_LEASE_EXPIRED, "lease expired"))

    def _assign(self, decision: SendAssign) -> None:
        scheduler = self.registry.get(decision.scheduler)
        assert scheduler is not None
        assignment = decision.assignment
        if scheduler.holds and scheduler.gate.holding:
            self._assign_held(scheduler, assignment)
            return
        if scheduler.protocol == 2:
            frame = encode(Assign(assignment))
        else:
            frame = encode_v1_payload(decision.payload)
        scheduler.gate.send(scheduler, frame.encode(), assigns=assignment.id)

    @staticmethod
    def _assign_held(scheduler: Connection, assignment: Assignment) -> None:
        """Send ``assignment`` now, held, so that the scheduler forks the job's process
        while the journal commits it; its release follows the commit, or a stop if the
        journal refuses the job."""
        scheduler.outbox.push(encode_bytes(Assign(assignment, hold=True)))
        job_id, attempt = assignment.id, assignment.attempt
        scheduler.gate.send(
            scheduler,
            encode_bytes(Release(job_id, attempt)),
            assigns=job_id,
            instead=partial(encode_bytes, Stop(job_id, attempt, "the journal refused the job")),
            release=True,
        )

    def _stop(self, decision: SendStop) -> None:
        stop = decision.stop
        scheduler = self.registry.get(decision.scheduler)
        logger.debug(
            "%s: stop job %s attempt %d: %s",
            decision.scheduler,
            short_id(stop.id),
            stop.attempt,
            stop.reason,
        )
        if scheduler is None:
            return
        # Its assignment or release may still wait for a commit: it must not go first.
        unsent = scheduler.gate.withdraw(scheduler, stop.id, stop.kind)
        if unsent and stop.kind == "cancel":
            # Its assignment was never sent, so no one will confirm the cancel: the job
            # ends here, once the decisions being carried out are. (A drop needs no
            # confirmation; its stop still goes, harmless to a scheduler that never
            # heard of the attempt.)
            self._unsent_cancels.append(stop.id)
        else:
            scheduler.send(stop)

    def _refused(
        self, recipient: Recipient, refusal: Refusal, error: JournalError, withdrawn: frozenset[str]
    ) -> None:
        """A commit failed before ``refusal``'s acknowledgment went out: tell its sender
        and take its jobs back, so they never run. A job (or broadcast run) whose
        assignment was ``withdrawn`` unsent ends cancelled at once, unknown to its
        scheduler; the others are cancelled as usual (a queued job at once)."""
        assert isinstance(recipient, Connection)
        why = f"{journal_problem(error)}; submit refused"
        logger.warning(
            "%s: %d accepted jobs taken back: %s", recipient.outbox.label, len(refusal.job_ids), why
        )
        recipient.send_now(Error(message=why, ref=refusal.ref))
        for job_id in (*refusal.job_ids, *refusal.runs):
            self.fanout.unsubscribe(recipient, job_id)
        for job_id in (*(run for run in refusal.runs if run in withdrawn), *refusal.job_ids):
            if not self.core.tracks(job_id):
                continue
            if job_id in withdrawn:
                logger.info("job %s: its assignment was withdrawn unsent", short_id(job_id))
                self.apply(self.core.withdraw(job_id, self.clock(), self.wall(), why))
            else:
                self.apply(self.core.cancel(job_id, self.wall()))

    # --- timer -----------------------------------------------------------------------

    def arm(self) -> None:
        """Set the loop timer for the core's next deadline if it is earlier than the one set."""
        deadline = self.core.next_deadline()
        if deadline is None or (self._timer.when is not None and self._timer_at <= deadline):
            return
        self._timer_at = deadline
        delay = max(0.0, deadline - self.clock())
        self._timer.set(asyncio.get_running_loop().time() + delay)

    def _on_timer(self) -> None:
        self.apply(self.core.tick(self.clock(), self.wall()))


def new_id() -> str:
    """128 bits from the OS's generator, as hex: ids nobody can guess ahead."""
    return os.urandom(16).hex()


def _ended_in(decisions: Sequence[Decision]) -> frozenset[str]:
    """The jobs whose final event is among ``decisions``."""
    return frozenset(
        d.event.id for d in decisions if isinstance(d, EmitEvent) and d.event.event in FINAL_EVENTS
    )


def _refusal_of(message: BusMessage) -> Refusal | None:
    """What to take back if the acknowledgment ``message`` cannot be sent: the new jobs
    it accepted (not those that existed already)."""
    if isinstance(message, Accepted) and not message.existing:
        return Refusal((message.id,), message.ref, tuple(message.runs or ()))
    if isinstance(message, SubmittedMany):
        new = [r for r in message.results if r.id is not None and not r.existing]
        runs = tuple(run for r in new for run in r.runs or ())
        return Refusal(tuple(r.id for r in new if r.id), message.ref, runs) if new else None
    return None
