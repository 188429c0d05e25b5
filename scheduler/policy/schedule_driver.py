"""The schedule book driven against the dispatch core: what a timer, a restart, a
declaration, a trigger or a status query does to periodic jobs. No I/O.

:class:`ScheduleDriver` is what the bus (:mod:`scheduler.bus.schedules`) and the
simulator (:mod:`scheduler.simulate.periodic`) both run: they keep only the timer at
:meth:`ScheduleDriver.next_deadline` and the journal of the book's changes.

* :meth:`~ScheduleDriver.declare` adds or updates the schedules a scheduler's tasks
  declare, but never one an admin added (its ``origin``): a scheduler token may
  declare periodic jobs of the tasks it serves, not change an admin's.
* :meth:`~ScheduleDriver.restore` takes the journal's schedules back after a restart;
  the shell then calls :meth:`~ScheduleDriver.due`, which catches up with what fell due
  while the bus was down (per each schedule's ``misfire_grace`` and ``coalesce``).
* :meth:`~ScheduleDriver.due` hands each due firing to the core's submit path with its
  deterministic job id (``NAME@<time>``, ``on_conflict`` ``ignore``) and the journal's
  record of that id when the core no longer tracks it (``lookup``), so firing a time
  again finds the existing job, final or not, and runs nothing twice.
* A firing that does not run (skipped for ``max_instances``, or missed) becomes a
  ``skipped`` :class:`~scheduler.protocol.JobEvent` for the monitors, with the job id it
  would have had and why; it is no job.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from scheduler.policy.dispatch.decisions import Decision, SendReply
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.policy.job import Job
from scheduler.policy.schedules import (
    Fire,
    Firing,
    Missed,
    ScheduleBook,
    ScheduleState,
    Skip,
    firing_id,
    iso_utc,
    spec_problem,
)
from scheduler.protocol import Error, JobEvent
from scheduler.protocol_schedules import ScheduleSpec

Lookup = Callable[[str], Job | None]
"""The journal's record of a job id the core no longer tracks (None: none)."""

_MISSED_WHY = {
    "late": "past their misfire grace",
    "coalesced": "coalesced: only the latest runs",
    "backlog": "too many to catch up one by one",
}


@dataclass
class FiringStep:
    """What firing schedules gave: the core's ``decisions`` (to carry out in order, as
    for any submit), the ``fired`` firings' job ids, the ``refused`` ones (job id, the
    core's error), and a ``skipped`` event for each firing that does not run (its
    ``error`` says why, as the log line)."""

    decisions: list[Decision] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[JobEvent] = field(default_factory=list)


@dataclass(frozen=True)
class Declared:
    """A scheduler's declaration: the schedules it added or changed, and those refused
    (name, why: the error names the field)."""

    changed: list[str]
    refused: list[tuple[str, str]]


class ScheduleDriver:
    """The bus's schedules (:attr:`book`) and what firing them does to the core."""

    def __init__(self, rng: random.Random | None = None) -> None:
        """An empty book; ``rng`` draws the jitter (seeded in tests)."""
        self.book = ScheduleBook(rng)

    def restore(self, states: Iterable[ScheduleState]) -> None:
        """Take back the journal's schedules; :meth:`due` then fires what fell due."""
        self.book.restore(states)

    def next_deadline(self) -> float | None:
        """The earliest wall time a firing is due (the shell's timer), or None."""
        return self.book.next_deadline()

    def declare(self, specs: Sequence[ScheduleSpec], tasks: Iterable[str], wall: float) -> Declared:
        """Add or update the schedules a scheduler serving ``tasks`` declares (by name:
        the same schedule from many schedulers is one); an invalid one, one of a task it
        does not serve, or one that would change a schedule an admin added, is refused."""
        served = set(tasks)
        changed: list[str] = []
        refused: list[tuple[str, str]] = []
        for spec in specs:
            problem = self._declaration_problem(spec, served)
            if problem is not None:
                refused.append((spec.name, problem))
            elif self.book.upsert(spec, wall, origin="declared"):
                changed.append(spec.name)
        return Declared(changed, refused)

    def _declaration_problem(self, spec: ScheduleSpec, served: set[str]) -> str | None:
        """Why a scheduler serving ``served`` may not declare ``spec`` (the error names
        the field), or None if it may. Declaring an added schedule as it is changes
        nothing, so it is no problem."""
        problem = spec_problem(spec)
        if problem is not None:
            return problem[1]
        if spec.task not in served:
            return f"task: {spec.task!r} is not a task this scheduler serves"
        state = self.book.get(spec.name)
        if state is not None and state.origin == "added" and state.spec != spec:
            return (
                f"name: schedule {spec.name} was added by an admin (schedules add); a"
                " scheduler's declaration cannot change it (an admin may remove it)"
            )
        return None

    def due(self, core: Dispatcher, now: float, wall: float, lookup: Lookup) -> FiringStep:
        """Fire every schedule due at ``wall`` (``now`` is the core's clock)."""
        firings = self.book.tick(wall, core.tracks)
        return self._carry_out(firings, core, now, wall, lookup)

    def trigger(
        self, name: str, core: Dispatcher, now: float, wall: float, lookup: Lookup
    ) -> tuple[str, FiringStep]:
        """Fire schedule ``name`` once now (``max_instances`` permitting); return what
        was done, in words, and the step."""
        firing = self.book.trigger(name, wall, core.tracks)
        step = self._carry_out([firing], core, now, wall, lookup)
        if isinstance(firing, Fire):
            return f"schedule {name} triggered: job {firing.job_id}", step
        return (
            f"schedule {name} not triggered: {len(firing.running)} earlier firings still"
            f" running (max_instances {firing.max_instances})"
        ), step

    def refresh(self, core: Dispatcher, wall: float, lookup: Lookup) -> None:
        """Note each schedule's latest firing's state (its job's, as the core or the
        journal knows it)."""
        for state in self.book.states():
            job_id = state.last_job
            if job_id is None or (state.last_outcome or "").startswith("skipped"):
                continue
            event = core.status(job_id, wall)
            job = lookup(job_id) if event is None else None
            outcome = event.state if event is not None else None if job is None else job.state
            if outcome is not None:
                self.book.record(state.spec.name, job_id, outcome)

    def _carry_out(
        self,
        firings: Sequence[Firing],
        core: Dispatcher,
        now: float,
        wall: float,
        lookup: Lookup,
    ) -> FiringStep:
        step = FiringStep()
        for firing in firings:
            state = self.book.get(firing.name)
            assert state is not None  # the book just fired it
            if isinstance(firing, Fire):
                self._submit(firing, core, now, wall, lookup, step)
            elif isinstance(firing, Skip):
                why = (
                    f"schedule {firing.name}: firing at {iso_utc(firing.scheduled)} skipped:"
                    f" {len(firing.running)} earlier firings still running"
                    f" (max_instances {firing.max_instances})"
                )
                step.skipped.append(skipped_event(state.spec, firing.scheduled, why, core, wall))
            else:
                why = missed_text(firing)
                step.skipped.append(skipped_event(state.spec, firing.first, why, core, wall))
        return step

    @staticmethod
    def _submit(
        fire: Fire,
        core: Dispatcher,
        now: float,
        wall: float,
        lookup: Lookup,
        step: FiringStep,
    ) -> None:
        job_id = fire.job_id
        job = None if core.tracks(job_id) else lookup(job_id)
        stored = {} if job is None else {job_id: job}
        decisions = core.submit(fire.payload, now, wall, stored=stored, by_bus=True)
        reply = decisions[0]
        if isinstance(reply, SendReply) and isinstance(reply.message, Error):
            step.refused.append((job_id, reply.message.message))
        else:
            step.fired.append(job_id)
        step.decisions.extend(decisions)


def skipped_event(
    spec: ScheduleSpec, scheduled: float, why: str, core: Dispatcher, wall: float
) -> JobEvent:
    """The ``skipped`` event of ``spec``'s firing at ``scheduled`` that does not run."""
    priority = spec.priority
    if priority is None:
        priority = core.task_priority(spec.task)
    return JobEvent(
        event="skipped",
        id=firing_id(spec.name, scheduled),
        priority=priority,
        state="skipped",
        time=wall,
        runtime=spec.runtime,
        task=spec.task,
        error=why,
    )


def missed_text(missed: Missed) -> str:
    """The log line (and skipped event's error) of ``missed``."""
    return (
        f"schedule {missed.name}: {missed.count} firings from {iso_utc(missed.first)}"
        f" to {iso_utc(missed.last)} not run ({_MISSED_WHY[missed.why]})"
    )
