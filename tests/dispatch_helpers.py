"""Helpers of the dispatch core's tests: a core with plain numbers for time, and
short ways to feed it and read its decisions."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from typing import Any

from scheduler.policy.dispatch.config import DispatchConfig
from scheduler.policy.dispatch.decisions import (
    Decision,
    EmitEvent,
    SendAssign,
    SendReply,
    SendStop,
)
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.policy.dispatch.producers import unserved_warning
from scheduler.policy.job import Job
from scheduler.protocol import Accepted, Held, JobPayload, Report, Stop
from scheduler.protocol_types import SchedulerReport

WALL = 1_700_000_000.0
LEASE = 5.0
UNSERVED = unserved_warning("sleep")


def new_core(**config: Any) -> Dispatcher:
    """A core with a seeded generator and ids j0, j1, ..."""
    counter = itertools.count()
    rules = DispatchConfig(**({"lease": LEASE} | config))
    return Dispatcher(rules, random.Random(1), new_id=lambda: f"j{next(counter)}")


def job(priority: int = 5, runtime: float = 1.0, task: str = "sleep", **more: Any) -> JobPayload:
    return JobPayload(priority=priority, runtime=runtime, task=task, **more)


def assigns(decisions: Iterable[Decision]) -> list[tuple[str, str]]:
    """(scheduler, job id) of every assignment, in order."""
    return [(d.scheduler, d.assignment.id) for d in decisions if isinstance(d, SendAssign)]


def sends(decisions: Iterable[Decision]) -> list[SendAssign]:
    return [d for d in decisions if isinstance(d, SendAssign)]


def stops(decisions: Iterable[Decision]) -> list[tuple[str, Stop]]:
    return [(d.scheduler, d.stop) for d in decisions if isinstance(d, SendStop)]


def events(decisions: Iterable[Decision]) -> list[str]:
    return [d.event.event for d in decisions if isinstance(d, EmitEvent)]


def emitted(decisions: Iterable[Decision]) -> list[EmitEvent]:
    return [d for d in decisions if isinstance(d, EmitEvent)]


def reply(decisions: Sequence[Decision]) -> Any:
    first = decisions[0]
    assert isinstance(first, SendReply)
    return first.message


def add(
    core: Dispatcher,
    name: str,
    size: int | None = 2,
    tasks: list[str] | None = None,
    reports: bool = True,
    now: float = 0.0,
    held: Sequence[Held] = (),
) -> list[Decision]:
    return core.attach(name, size=size, tasks=tasks, reports=reports, held=held, now=now, wall=WALL)


def submit(
    core: Dispatcher, payload: JobPayload | None = None, now: float = 0.0, **kwargs: Any
) -> list[Decision]:
    return core.submit(payload or job(), now, WALL, **kwargs)


def submit_id(core: Dispatcher, payload: JobPayload | None = None, now: float = 0.0) -> str:
    accepted = reply(submit(core, payload, now))
    assert isinstance(accepted, Accepted)
    return accepted.id


def report(
    core: Dispatcher,
    scheduler: str,
    job_id: str,
    event: SchedulerReport,
    attempt: int = 1,
    now: float = 0.0,
    **more: Any,
) -> list[Decision]:
    return core.report(
        scheduler, Report(event=event, id=job_id, attempt=attempt, **more), now, WALL
    )


def info(core: Dispatcher, job_id: str) -> Any:
    snapshot = core.job(job_id)
    assert snapshot is not None
    return snapshot


def stored_job(job_id: str, seq: int, **fields: Any) -> Job:
    return Job(job_id, job(priority=seq), seq, WALL - 100, **fields)


def start(core: Dispatcher, scheduler: str, *job_ids: str, now: float = 0.0) -> None:
    for job_id in job_ids:
        assert events(report(core, scheduler, job_id, "started", now=now)) == ["started"]


def booked(core: Dispatcher, name: str) -> tuple[int, int, int, int]:
    """(busy, pending, incoming, waiting) of scheduler ``name``."""
    s = core.scheduler(name)
    assert s is not None
    return s.busy, s.pending, s.incoming, s.waiting


def queue_at_a(core: Dispatcher) -> None:
    """Scheduler a (1 slot) runs j0 (priority 0) while j1 (7) and j2 (3) wait there."""
    add(core, "a", size=1)
    submit(core, job(priority=0))
    start(core, "a", "j0")
    submit(core, job(priority=7))
    submit(core, job(priority=3))
    assert booked(core, "a") == (1, 2, 0, 2)


def stats_of(core: Dispatcher, now: float = 0.0) -> Any:
    return core.stats(now, uptime_s=1.0)


def priorities_of(core: Dispatcher) -> dict[str, int | None]:
    """The priority in the payload of each job changed since the last call, by id."""
    changed, _ = core.take_changes()
    return {job.id: job.payload.priority for job in changed}
