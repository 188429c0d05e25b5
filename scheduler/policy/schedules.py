"""Periodic jobs: when each schedule fires, which firings run, are skipped or missed. No I/O.

A :class:`ScheduleBook` holds the bus's schedules
(:class:`~scheduler.protocol_schedules.ScheduleSpec`) and, for each, its next fire time
and its latest firing. :meth:`ScheduleBook.tick` takes the wall time (epoch seconds) and
hands back what is due:

* :class:`Fire`: submit this firing as a job whose id is ``NAME@<scheduled time>``
  (:func:`firing_id`), so firing the same time again (a restart, a concurrent trigger)
  finds the existing job and runs nothing twice;
* :class:`Skip`: a firing not run because ``max_instances`` earlier firings are not final;
* :class:`Missed`: firings not run because the bus was down past their ``misfire_grace``,
  or because ``coalesce`` runs only the latest of a backlog.

Every fire time up to the latest tick is accounted for by exactly one of these: nothing
is skipped silently. Interval schedules fire on multiples of ``every`` since the epoch;
cron schedules at the times croniter gives in the schedule's time zone (a time a DST
change skips does not fire, a time it repeats fires once for each UTC instant, as
croniter documents).

Each schedule records its ``origin``
(:data:`~scheduler.protocol_schedules.ScheduleOrigin`): ``added`` by an admin's
command, or ``declared`` by a scheduler's tasks when it registers. A declaration never
changes an added schedule (see
:meth:`~scheduler.policy.schedule_driver.ScheduleDriver.declare`); an ``add``
replaces either.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from scheduler.protocol import JobPayload
from scheduler.protocol_schedules import ScheduleInfo, ScheduleOrigin, ScheduleSpec

MAX_BACKLOG: Final = 1000
"""Most missed fire times one tick looks at one by one; past it they are counted in bulk."""


@dataclass(frozen=True, slots=True)
class Fire:
    """Submit ``payload`` (its ``job_id`` is :func:`firing_id`) for ``name``'s firing at
    ``scheduled``; ``manual`` if an operator triggered it."""

    name: str
    scheduled: float
    payload: JobPayload
    manual: bool = False

    @property
    def job_id(self) -> str:
        """The firing's job id (:func:`firing_id`)."""
        return firing_id(self.name, self.scheduled)


@dataclass(frozen=True, slots=True)
class Skip:
    """``name``'s firing at ``scheduled`` is not run: ``running`` earlier firings are not
    final and the schedule allows ``max_instances``."""

    name: str
    scheduled: float
    running: tuple[str, ...]
    max_instances: int


@dataclass(frozen=True, slots=True)
class Missed:
    """``count`` firings of ``name`` from ``first`` to ``last`` are not run: ``why`` is
    ``late`` (past their grace) or ``coalesced`` (a later firing runs instead)."""

    name: str
    count: int
    first: float
    last: float
    why: str


Firing = Fire | Skip | Missed
"""What :meth:`ScheduleBook.tick` hands back."""


@dataclass(slots=True)
class ScheduleState:
    """A schedule and where it stands: ``next_fire`` its next scheduled time (None while
    paused), ``due`` when that firing is due (``next_fire`` plus its jitter), the latest
    firing's time, job id and outcome, the job ids of firings that may still run, and
    its ``origin``."""

    spec: ScheduleSpec
    paused: bool = False
    next_fire: float | None = None
    due: float | None = None
    last_fire: float | None = None
    last_job: str | None = None
    last_outcome: str | None = None
    instances: list[str] = field(default_factory=list)
    origin: ScheduleOrigin = "added"

    def info(self) -> ScheduleInfo:
        """The wire's view of this schedule."""
        return ScheduleInfo(
            spec=self.spec,
            paused=self.paused,
            next_fire=self.next_fire,
            last_fire=self.last_fire,
            last_job=self.last_job,
            last_outcome=self.last_outcome,
            origin=self.origin,
        )


def spec_problem(spec: ScheduleSpec) -> tuple[str, str] | None:
    """The field of ``spec`` that breaks a rule and the error naming it, or None if valid:
    exactly one of ``every`` and ``cron``, a cron expression croniter accepts, a known
    time zone."""
    if (spec.every is None) == (spec.cron is None):
        return "every", "every: give exactly one of every (seconds) and cron (an expression)"
    try:
        zone = ZoneInfo(spec.tz)
    except (ZoneInfoNotFoundError, ValueError):
        return "tz", f"tz: unknown time zone {spec.tz!r} (an IANA name such as Europe/Berlin)"
    if spec.cron is not None:
        try:
            croniter(spec.cron, datetime(2000, 1, 1, tzinfo=zone)).get_next(float)
        except (CroniterBadCronError, CroniterBadDateError, ValueError, KeyError) as exc:
            return "cron", f"cron: not a valid cron expression {spec.cron!r}: {exc}"
    return None


def fire_after(spec: ScheduleSpec, after: float) -> float:
    """The first fire time of ``spec`` strictly after ``after`` (epoch seconds)."""
    if spec.every is not None:
        step = spec.every
        when = round((math.floor(after / step) + 1) * step, 3)
        return when if when > after else round(when + step, 3)
    assert spec.cron is not None
    start = datetime.fromtimestamp(after, ZoneInfo(spec.tz))
    return float(croniter(spec.cron, start).get_next(float))


def fire_times(spec: ScheduleSpec, after: float, count: int) -> list[float]:
    """The next ``count`` fire times of ``spec`` after ``after``: a dry run."""
    times: list[float] = []
    for _ in range(count):
        after = fire_after(spec, after)
        times.append(after)
    return times


def iso_utc(when: float) -> str:
    """``when`` as ISO 8601 UTC: whole seconds, or milliseconds when it has a fraction."""
    moment = datetime.fromtimestamp(when, UTC)
    spec = "seconds" if moment.microsecond == 0 else "milliseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def firing_id(name: str, scheduled: float) -> str:
    """The job id of ``name``'s firing at ``scheduled``: ``NAME@2026-01-01T00:00:00Z``."""
    return f"{name}@{iso_utc(scheduled)}"


def firing_payload(spec: ScheduleSpec, scheduled: float) -> JobPayload:
    """The job of ``spec``'s firing at ``scheduled``: an existing job of that id is kept."""
    return JobPayload(
        task=spec.task,
        args=spec.args,
        runtime=spec.runtime,
        priority=spec.priority,
        timeout=spec.timeout,
        job_id=firing_id(spec.name, scheduled),
        on_conflict="ignore",
    )


def same_timing(old: ScheduleSpec, new: ScheduleSpec) -> bool:
    """Whether ``old`` and ``new`` fire at the same times (then the next fire time stays)."""
    return (old.every, old.cron, old.tz) == (new.every, new.cron, new.tz)


class ScheduleBook:
    """The bus's schedules by name, fed the wall time; every change is recorded for the
    journal (:meth:`take_changes`)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        """An empty book; ``rng`` draws the jitter (seeded in tests)."""
        self._rng = rng or random.Random()
        self._states: dict[str, ScheduleState] = {}
        self._changed: set[str] = set()
        self._removed: set[str] = set()

    def __contains__(self, name: object) -> bool:
        """Whether a schedule of that name exists."""
        return name in self._states

    def get(self, name: str) -> ScheduleState | None:
        """The schedule ``name``, or None."""
        return self._states.get(name)

    def states(self) -> list[ScheduleState]:
        """Every schedule, by name."""
        return [self._states[name] for name in sorted(self._states)]

    def restore(self, states: Iterable[ScheduleState]) -> None:
        """Take back the journal's schedules (as they were saved); nothing is changed."""
        for state in states:
            self._states[state.spec.name] = state

    def upsert(self, spec: ScheduleSpec, now: float, origin: ScheduleOrigin = "added") -> bool:
        """Add ``spec`` or replace the schedule of its name, as ``origin`` did; return
        whether anything changed. A replaced schedule keeps its pause and history, and
        its next fire time unless its timing changed. Declaring the spec a schedule has
        changes nothing (an added one stays added); adding it makes it added."""
        state = self._states.get(spec.name)
        if state is not None and state.spec == spec and origin in (state.origin, "declared"):
            return False
        if state is None:
            state = self._states[spec.name] = ScheduleState(spec, origin=origin)
        elif same_timing(state.spec, spec):
            state.spec, state.origin = spec, origin
            self._changed.add(spec.name)
            return True
        state.spec, state.origin = spec, origin
        if not state.paused:
            self._plan(state, now)
        self._changed.add(spec.name)
        self._removed.discard(spec.name)
        return True

    def remove(self, name: str) -> bool:
        """Delete schedule ``name`` (its firings' jobs stay); return whether it existed."""
        if self._states.pop(name, None) is None:
            return False
        self._changed.discard(name)
        self._removed.add(name)
        return True

    def pause(self, name: str) -> bool:
        """Stop ``name`` firing until :meth:`resume`; return whether it was running."""
        state = self._states[name]
        if state.paused:
            return False
        state.paused = True
        state.next_fire = state.due = None
        self._changed.add(name)
        return True

    def resume(self, name: str, now: float) -> bool:
        """Let ``name`` fire again from its first time after ``now`` (what fell due while
        paused is not run); return whether it was paused."""
        state = self._states[name]
        if not state.paused:
            return False
        state.paused = False
        self._plan(state, now)
        self._changed.add(name)
        return True

    def trigger(self, name: str, now: float, live: Callable[[str], bool]) -> Fire | Skip:
        """Fire ``name`` once now (its id names ``now``), ``max_instances`` permitting;
        its schedule is unchanged."""
        state = self._states[name]
        return self._fire(state, round(now, 3), live, manual=True)

    def next_deadline(self) -> float | None:
        """The earliest wall time a firing is due, or None."""
        dues = [s.due for s in self._states.values() if s.due is not None]
        return min(dues, default=None)

    def tick(self, now: float, live: Callable[[str], bool]) -> list[Firing]:
        """Hand back the firings due at ``now``; ``live(job_id)`` says whether an earlier
        firing's job is not final yet. Each due schedule moves to its next fire time."""
        firings: list[Firing] = []
        for state in self.states():
            if state.due is not None and state.due <= now:
                firings.extend(self._catch_up(state, now, live))
        return firings

    def record(self, name: str, job_id: str, outcome: str) -> None:
        """Note the outcome (the job's state) of ``name``'s firing ``job_id`` if it is
        still the latest."""
        state = self._states.get(name)
        if state is not None and state.last_job == job_id and state.last_outcome != outcome:
            state.last_outcome = outcome
            self._changed.add(name)

    def take_changes(self) -> tuple[list[ScheduleState], list[str]]:
        """The schedules changed and the names removed since the last call, for the journal."""
        changed = [self._states[name] for name in sorted(self._changed)]
        removed = sorted(self._removed)
        self._changed.clear()
        self._removed.clear()
        return changed, removed

    def _plan(self, state: ScheduleState, now: float) -> None:
        """Set ``state``'s next fire time after ``now`` and draw its jitter."""
        state.next_fire = fire_after(state.spec, now)
        jitter = state.spec.jitter
        state.due = state.next_fire + (self._rng.uniform(0, jitter) if jitter > 0 else 0.0)

    def _catch_up(
        self, state: ScheduleState, now: float, live: Callable[[str], bool]
    ) -> list[Firing]:
        """The firings of ``state`` due by ``now``: those past their grace missed, then
        all the rest or (``coalesce``) only the latest of them."""
        assert state.next_fire is not None
        spec = state.spec
        dropped, dropped_last, times = due_times(spec, state.next_fire, now)
        firings: list[Firing] = []
        if dropped:
            firings.append(Missed(spec.name, dropped, state.next_fire, dropped_last, "backlog"))
        grace = spec.misfire_grace
        late = [t for t in times if grace is not None and now - t > grace]
        timely = times[len(late) :]
        if late:
            firings.append(Missed(spec.name, len(late), late[0], late[-1], "late"))
        if spec.coalesce and len(timely) > 1:
            firings.append(Missed(spec.name, len(timely) - 1, timely[0], timely[-2], "coalesced"))
            timely = timely[-1:]
        for scheduled in timely:
            firings.append(self._fire(state, scheduled, live))
        self._plan(state, now)
        self._changed.add(spec.name)
        return firings

    def _fire(
        self,
        state: ScheduleState,
        scheduled: float,
        live: Callable[[str], bool],
        manual: bool = False,
    ) -> Fire | Skip:
        """Fire ``state`` at ``scheduled`` unless ``max_instances`` firings are not final."""
        state.instances = [job_id for job_id in state.instances if live(job_id)]
        spec = state.spec
        job_id = firing_id(spec.name, scheduled)
        state.last_fire = scheduled
        self._changed.add(spec.name)
        running = tuple(i for i in state.instances if i != job_id)
        if len(running) >= spec.max_instances:
            state.last_outcome = f"skipped: {len(running)} earlier firings still running"
            return Skip(spec.name, scheduled, running, spec.max_instances)
        if job_id not in state.instances:
            state.instances.append(job_id)
        state.last_job = job_id
        state.last_outcome = "submitted"
        return Fire(spec.name, scheduled, firing_payload(spec, scheduled), manual)


def due_times(spec: ScheduleSpec, first: float, now: float) -> tuple[int, float, list[float]]:
    """The fire times of ``spec`` from ``first`` (one of them) up to ``now``: how many of
    the oldest are left out past :data:`MAX_BACKLOG`, the latest of those, and the rest."""
    if spec.every is not None:
        total = math.floor((now - first) / spec.every + 1e-9) + 1
        skip = max(0, total - MAX_BACKLOG)
        times = [round(first + k * spec.every, 3) for k in range(skip, total)]
        return skip, round(first + (skip - 1) * spec.every, 3), times
    kept: deque[float] = deque(maxlen=MAX_BACKLOG)
    skip, skipped_last, when = 0, first, first
    while when <= now:
        if len(kept) == MAX_BACKLOG:
            skip, skipped_last = skip + 1, kept[0]
        kept.append(when)
        when = fire_after(spec, when)
    return skip, skipped_last, list(kept)
