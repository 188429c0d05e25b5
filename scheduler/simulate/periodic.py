"""The simulated bus's side of the workload's requests that are not submits: a
producer's cancels, and the periodic schedules an admin adds and removes.

Schedules run the bus's own :class:`~scheduler.policy.schedule_driver.ScheduleDriver`:
this module is only its shell, as :mod:`scheduler.bus.schedules` is live: one timer at
the driver's next deadline, a journal of the book's changes (kept at once, as the
bus's group commit keeps them with the jobs they submitted), and the driver's
decisions carried out as the hub does. A bus restart takes the schedules back from that
journal and catches up with what fell due while it was down. Final jobs are kept too
(the journal's records), so a firing or a cancel of a job the core no longer tracks
finds it, as live.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING

from scheduler.policy.dispatch.decisions import SendReply
from scheduler.policy.job import Job
from scheduler.policy.schedule_driver import FiringStep, ScheduleDriver
from scheduler.policy.schedules import ScheduleState
from scheduler.simulate.entries import Request, SimCancel, SimSchedule

if TYPE_CHECKING:
    from scheduler.simulate.engine import Simulation


class SimRequests:
    """Cancels and schedules for ``sim``; ``seed`` draws the schedules' jitter."""

    def __init__(self, sim: Simulation, seed: int) -> None:
        """No schedule yet; final jobs are kept from now on."""
        self._sim = sim
        self._seed = seed
        self.driver = ScheduleDriver(random.Random(seed))
        self.finals: dict[str, Job] = {}
        """The journal's final jobs, by id."""
        self._saved: dict[str, ScheduleState] = {}
        self._deferred: list[Request] = []
        self._timer_at = float("inf")

    def lookup(self, job_id: str) -> Job | None:
        """The journal's record of final job ``job_id``, or None."""
        return self.finals.get(job_id)

    def request(self, entry: Request) -> None:
        """Carry out ``entry``: a cancel is refused while the bus is down; a schedule
        change waits for it (the admin tries again)."""
        sim = self._sim
        if isinstance(entry, SimCancel):
            self._cancel(entry)
        elif not sim.bus_up:
            self._deferred.append(entry)
        elif isinstance(entry, SimSchedule):
            self.driver.book.upsert(entry.spec, sim.now)
            self._commit()
        else:
            self.driver.book.remove(entry.name)
            self._commit()

    def _cancel(self, entry: SimCancel) -> None:
        sim = self._sim
        sim.recorder.counts["cancels"] += 1
        if not sim.bus_up:
            sim.recorder.counts["refused"] += 1
            sim.traced("cancel", entry.job_id, None)
            return
        core = sim.core
        stored = None if core.tracks(entry.job_id) else self.lookup(entry.job_id)
        decisions = core.cancel(entry.job_id, sim.now, stored=stored)
        reply = decisions[0]
        assert isinstance(reply, SendReply)
        sim.traced("cancel", entry.job_id, reply.message)
        sim.carry_out(decisions)

    # --- the bus goes and comes back -------------------------------------------------

    def bus_back(self) -> None:
        """The bus is back: a new driver takes the journal's schedules back, fires what
        fell due while it was down, then the changes that waited are made."""
        self.driver = ScheduleDriver(random.Random(self._seed))
        self.driver.restore(replace(s, instances=list(s.instances)) for s in self._saved.values())
        self._timer_at = float("inf")
        self._fire()
        deferred, self._deferred = self._deferred, []
        for entry in deferred:
            self.request(entry)

    # --- the timer -------------------------------------------------------------------

    def _on_timer(self, due: float) -> None:
        if due != self._timer_at or not self._sim.bus_up:
            return
        self._timer_at = float("inf")
        self._fire()

    def _fire(self) -> None:
        sim = self._sim
        step = self.driver.due(sim.core, sim.now, sim.now, self.lookup)
        self._carry_out(step)
        self._commit()

    def _carry_out(self, step: FiringStep) -> None:
        sim = self._sim
        counts = sim.recorder.counts
        for job_id in step.fired:
            counts["fired"] += 1
            sim.traced("fired", job_id, None)
        counts["firings_refused"] += len(step.refused)
        for event in step.skipped:
            counts["firings_skipped"] += 1
            sim.traced("skipped", event.id, event)
        if step.decisions:
            sim.carry_out(step.decisions)

    def _commit(self) -> None:
        """Journal the book's changes (copies: the book goes on changing them) and re-arm."""
        changed, removed = self.driver.book.take_changes()
        for state in changed:
            self._saved[state.spec.name] = replace(state, instances=list(state.instances))
        for name in removed:
            self._saved.pop(name, None)
        due = self.driver.next_deadline()
        if due is not None and due < self._timer_at:
            self._timer_at = due
            sim = self._sim
            sim.background(max(due, sim.now), self._on_timer, due)
