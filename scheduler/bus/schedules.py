"""The bus's periodic jobs: the schedule driver's timer, its journal, and its commands.

:class:`BusSchedules` holds the pure :class:`~scheduler.policy.schedule_driver.ScheduleDriver`
(the same code the simulator runs): it takes the schedules back from the journal when the
bus starts, sets one loop timer (on the wall clock) for the next firing, and carries out
what the driver decides: the submits of the firings (as any submit), and the ``skipped``
event of each firing that does not run, logged and sent to every monitor. Every change
to a schedule is journaled in the same group commit as the jobs it submitted, and
replies wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from scheduler.bus.connection import Connection
from scheduler.bus.deadline_timer import DeadlineTimer
from scheduler.bus.hub import Hub
from scheduler.policy.schedule_driver import FiringStep, ScheduleDriver
from scheduler.policy.schedules import fire_times, spec_problem
from scheduler.protocol import Error
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
        self.driver = ScheduleDriver(rng)
        self.book = self.driver.book
        self._timer = DeadlineTimer(self._on_timer)
        self.handlers: dict[type, Callable[[Connection, Any], None]] = {
            ScheduleAdd: self._add,
            ScheduleChange: self._change,
            ScheduleQuery: self._query,
        }
        """The handler of each schedule command, for :class:`~scheduler.bus.requests.Requests`."""

    def open(self) -> None:
        """Take the journal's schedules back and fire what fell due while the bus was down
        (per each schedule's grace and ``coalesce``)."""
        self.driver.restore(self._hub.journal.schedules())
        count = len(self.book.states())
        if count:
            logger.info("journal: %d schedules", count)
        self._on_timer()

    def stop(self) -> None:
        """Cancel the timer for good."""
        self._timer.close()

    def declare(self, client: Connection, specs: list[ScheduleSpec], tasks: list[str]) -> None:
        """Add or update the schedules a scheduler's tasks declare (by name: the same
        schedule from many schedulers is one); an invalid one, one of a task the
        scheduler does not serve (``tasks``), or one that would change a schedule an
        admin added, is logged (``schedule X refused: ...``) and left out."""
        declared = self.driver.declare(specs, tasks, self._hub.wall())
        for name, why in declared.refused:
            logger.warning("%s: schedule %s refused: %s", client.name, name, why)
        if declared.changed:
            logger.info("%s: declared schedules %s", client.name, ", ".join(declared.changed))
            self._commit()

    # --- commands --------------------------------------------------------------------

    def _add(self, client: Connection, request: ScheduleAdd) -> None:
        """Add or replace an admin's schedule: it is ``added`` from now on, so no
        scheduler's declaration changes it."""
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
            message, step = self.driver.trigger(
                name, hub.core, hub.clock(), hub.wall(), hub.journal.get
            )
            self._carry_out(step)
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
        hub = self._hub
        self._carry_out(self.driver.due(hub.core, hub.clock(), hub.wall(), hub.journal.get))
        self._commit()

    def _carry_out(self, step: FiringStep) -> None:
        """Log what the driver fired or refused, tell every monitor of each firing not
        run, and carry out the core's decisions."""
        hub = self._hub
        for job_id in step.fired:
            logger.debug("schedule %s: fired %s", job_id.partition("@")[0], job_id)
        for job_id, why in step.refused:
            logger.warning(
                "schedule %s: firing %s refused: %s", job_id.partition("@")[0], job_id, why
            )
        for event in step.skipped:
            logger.warning("%s", event.error)
            hub.fanout.publish_to_monitors(event, hub.gate)
        if step.decisions:
            hub.apply(step.decisions)

    def _commit(self) -> None:
        """Journal what changed in the book (with the jobs it submitted) and re-arm."""
        changed, removed = self.book.take_changes()
        if changed or removed:
            self._hub.journal.save_schedules(changed, removed)
            self._hub.gate.changed()
        self._arm()

    def _arm(self) -> None:
        due = self.driver.next_deadline()
        if due is None:
            self._timer.cancel()
            return
        delay = max(0.0, due - self._hub.wall())
        self._timer.set(asyncio.get_running_loop().time() + delay)

    def _refresh_outcomes(self) -> None:
        """Note each schedule's latest firing's state (its job's, as the bus knows it)."""
        hub = self._hub
        self.driver.refresh(hub.core, hub.wall(), hub.journal.get)
        self._commit()


def _unknown(name: str, ref: str | int | None) -> Error:
    return Error(f"name: no schedule named {name!r}", field="name", ref=ref)
