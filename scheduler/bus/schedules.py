"""The bus's periodic jobs: the schedule book's timer, its journal, and its commands.

:class:`BusSchedules` holds the pure :class:`~scheduler.policy.schedules.ScheduleBook`,
takes its schedules back from the journal when the bus starts, and sets one loop timer
(on the wall clock) for the next firing. A firing is submitted through the dispatch
core's submit path with its deterministic job id (``NAME@<time>``, ``on_conflict``
``ignore``), so firing a time again finds the existing job. Every change to a schedule is
journaled in the same group commit as the jobs it submitted, and replies wait for it.
A firing that does not run (skipped for ``max_instances``, or missed) is logged and sent
to every monitor as a ``skipped`` event with the id it would have had; it is no job.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from scheduler.bus.connection import Connection
from scheduler.bus.hub import Hub
from scheduler.policy.dispatch.decisions import SendReply
from scheduler.policy.schedules import (
    Fire,
    Firing,
    Missed,
    ScheduleBook,
    Skip,
    fire_times,
    firing_id,
    iso_utc,
    spec_problem,
)
from scheduler.protocol import Error, JobEvent
from scheduler.protocol_schedules import (
    ScheduleAdd,
    ScheduleChange,
    ScheduleQuery,
    Schedules,
    ScheduleSpec,
)

# The bus's log lines keep the one logger name its users and tests filter on.
logger = logging.getLogger("scheduler.bus.server")


class BusSchedules:
    """The schedules of one bus: their timer, their journal rows and their commands."""

    def __init__(self, hub: Hub, rng: random.Random | None = None) -> None:
        """Nothing is read until :meth:`open`."""
        self._hub = hub
        self.book = ScheduleBook(rng)
        self._timer: asyncio.TimerHandle | None = None
        self.handlers: dict[type, Callable[[Connection, Any], None]] = {
            ScheduleAdd: self._add,
            ScheduleChange: self._change,
            ScheduleQuery: self._query,
        }
        """The handler of each schedule command, for :class:`~scheduler.bus.requests.Requests`."""

    def open(self) -> None:
        """Take the journal's schedules back and fire what fell due while the bus was down
        (per each schedule's grace and ``coalesce``)."""
        self.book.restore(self._hub.journal.schedules())
        count = len(self.book.states())
        if count:
            logger.info("journal: %d schedules", count)
        self._on_timer()

    def stop(self) -> None:
        """Cancel the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def declare(self, client: Connection, specs: list[ScheduleSpec], tasks: list[str]) -> None:
        """Add or update the schedules a scheduler's tasks declare (by name: the same
        schedule from many schedulers is one); an invalid one, or one of a task the
        scheduler does not serve (``tasks``), is logged and left out."""
        wall = self._hub.wall()
        changed = []
        for spec in specs:
            problem = spec_problem(spec)
            if problem is None and spec.task not in tasks:
                problem = "task", f"task: {spec.task!r} is not a task this scheduler serves"
            if problem is not None:
                logger.warning("%s: schedule %s refused: %s", client.name, spec.name, problem[1])
            elif self.book.upsert(spec, wall):
                changed.append(spec.name)
        if changed:
            logger.info("%s: declared schedules %s", client.name, ", ".join(changed))
            self._commit()

    # --- commands --------------------------------------------------------------------

    def _add(self, client: Connection, request: ScheduleAdd) -> None:
        spec = request.schedule
        problem = spec_problem(spec)
        if problem is not None:
            field, why = problem
            client.send(Error(f"schedule.{why}", field=f"schedule.{field}", ref=request.ref))
            return
        existed = spec.name in self.book
        self.book.upsert(spec, self._hub.wall())
        self._commit()
        what = "replaced" if existed else "added"
        logger.info("%s: schedule %s %s", client.name, spec.name, what)
        self._reply(client, request.ref, [spec.name], f"schedule {spec.name} {what}")

    def _change(self, client: Connection, request: ScheduleChange) -> None:
        name = request.name
        if name not in self.book:
            client.send(_unknown(name, request.ref))
            return
        hub = self._hub
        if request.action == "trigger":
            firing = self.book.trigger(name, hub.wall(), hub.core.tracks)
            self._carry_out([firing])
            message = _said(firing)
        elif request.action == "remove":
            self.book.remove(name)
            message = f"schedule {name} removed (its jobs stay)"
        elif request.action == "pause":
            done = self.book.pause(name)
            message = f"schedule {name} {'paused' if done else 'was paused already'}"
        else:
            done = self.book.resume(name, hub.wall())
            message = f"schedule {name} {'resumed' if done else 'was not paused'}"
        self._commit()
        logger.info("%s: %s", client.name, message)
        self._reply(client, request.ref, [name] if name in self.book else [], message)

    def _query(self, client: Connection, request: ScheduleQuery) -> None:
        name = request.name
        if request.query == "list":
            self._refresh_outcomes()
            self._reply(client, request.ref, [s.spec.name for s in self.book.states()], None)
            return
        state = None if name is None else self.book.get(name)
        if name is None or state is None:
            error = Error("name: give a schedule's name", field="name", ref=request.ref)
            client.send(error if name is None else _unknown(name, request.ref))
            return
        self._refresh_outcomes()
        times: list[float] = []
        if request.query == "next":
            times = fire_times(state.spec, self._hub.wall(), request.count)
        self._reply(client, request.ref, [name], None, times)

    def _reply(
        self,
        client: Connection,
        ref: str | int | None,
        names: list[str],
        message: str | None,
        times: list[float] | None = None,
    ) -> None:
        infos = [state.info() for name in names if (state := self.book.get(name)) is not None]
        client.send(Schedules(schedules=infos, times=times or [], message=message, ref=ref))

    # --- firing ----------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        hub = self._hub
        firings = self.book.tick(hub.wall(), hub.core.tracks)
        self._carry_out(firings)
        self._commit()

    def _carry_out(self, firings: list[Firing]) -> None:
        for firing in firings:
            if isinstance(firing, Fire):
                self._submit(firing)
            elif isinstance(firing, Skip):
                why = (
                    f"schedule {firing.name}: firing at {iso_utc(firing.scheduled)} skipped:"
                    f" {len(firing.running)} earlier firings still running"
                    f" (max_instances {firing.max_instances})"
                )
                logger.warning("%s", why)
                self._announce(firing.name, firing.scheduled, why)
            else:
                why = _missed_text(firing)
                logger.warning("%s", why)
                self._announce(firing.name, firing.first, why)

    def _announce(self, name: str, scheduled: float, why: str) -> None:
        """Tell every monitor that ``name``'s firing at ``scheduled`` does not run: a
        ``skipped`` event with the job id the firing would have had and ``why``. It is
        no job: nothing is journaled for it and no producer watches it."""
        hub = self._hub
        state = self.book.get(name)
        if state is None:
            return
        spec = state.spec
        priority = spec.priority
        if priority is None:
            priority = hub.core.task_priority(spec.task)
        event = JobEvent(
            event="skipped",
            id=firing_id(name, scheduled),
            priority=priority,
            state="skipped",
            time=hub.wall(),
            runtime=spec.runtime,
            task=spec.task,
            error=why,
        )
        hub.fanout.publish_to_monitors(event, hub.gate)

    def _submit(self, fire: Fire) -> None:
        hub = self._hub
        job_id = fire.job_id
        job = None if hub.core.tracks(job_id) else hub.journal.get(job_id)
        stored = {} if job is None else {job_id: job}
        decisions = hub.core.submit(fire.payload, hub.clock(), hub.wall(), stored=stored)
        reply = decisions[0]
        if isinstance(reply, SendReply) and isinstance(reply.message, Error):
            why = reply.message.message
            logger.warning("schedule %s: firing %s refused: %s", fire.name, job_id, why)
        else:
            logger.debug("schedule %s: fired %s", fire.name, job_id)
        hub.apply(decisions)

    def _commit(self) -> None:
        """Journal what changed in the book (with the jobs it submitted) and re-arm."""
        changed, removed = self.book.take_changes()
        if changed or removed:
            self._hub.journal.save_schedules(changed, removed)
            self._hub.gate.changed()
        self._arm()

    def _arm(self) -> None:
        self.stop()
        due = self.book.next_deadline()
        if due is not None:
            delay = max(0.0, due - self._hub.wall())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _refresh_outcomes(self) -> None:
        """Note each schedule's latest firing's state (its job's, as the bus knows it)."""
        hub = self._hub
        wall = hub.wall()
        for state in self.book.states():
            job_id = state.last_job
            if job_id is None or (state.last_outcome or "").startswith("skipped"):
                continue
            event = hub.core.status(job_id, wall)
            job = hub.journal.get(job_id) if event is None else None
            outcome = event.state if event is not None else None if job is None else job.state
            if outcome is not None:
                self.book.record(state.spec.name, job_id, outcome)
        self._commit()


def _unknown(name: str, ref: str | int | None) -> Error:
    return Error(f"name: no schedule named {name!r}", field="name", ref=ref)


def _said(firing: Fire | Skip) -> str:
    if isinstance(firing, Fire):
        return f"schedule {firing.name} triggered: job {firing.job_id}"
    return (
        f"schedule {firing.name} not triggered: {len(firing.running)} earlier firings still"
        f" running (max_instances {firing.max_instances})"
    )


def _missed_text(missed: Missed) -> str:
    """The log line (and skipped event's error) of ``missed``."""
    why = {
        "late": "past their misfire grace",
        "coalesced": "coalesced: only the latest runs",
        "backlog": "too many to catch up one by one",
    }[missed.why]
    return (
        f"schedule {missed.name}: {missed.count} firings from {iso_utc(missed.first)}"
        f" to {iso_utc(missed.last)} not run ({why})"
    )
