"""What a simulation submits, and when: the producer's random jobs, a JSON-lines file of
jobs (and cancels and schedules, :mod:`.entries`), or the jobs of a recorded live run
(``monitor --json`` output).

A :class:`Workload` can be read any number of times and gives the same jobs each time
(so that ``--compare`` runs every variant on one workload). Times are simulated seconds
from the start of the run.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from scheduler.policy.schedules import spec_problem
from scheduler.producer.workload import JobMaker, Span, periods
from scheduler.protocol import JobPayload
from scheduler.protocol_schedules import ScheduleSpec
from scheduler.simulate.entries import (
    EntryError,
    Request,
    SimSchedule,
    SimUnschedule,
    cancel_entry,
    schedule_entries,
)


@dataclass(frozen=True, slots=True)
class SimJob:
    """One submit: ``payload`` reaches the bus at ``at``; ``fail``: each attempt of it
    ends ``failed`` (exit code 1) instead of succeeding."""

    at: float
    payload: JobPayload
    fail: bool = False


Entry = SimJob | Request
"""One thing a workload does at its time: submit a job, cancel one, add or remove a
schedule."""


@dataclass(frozen=True)
class Workload:
    """Jobs (and other entries) in time order (:meth:`jobs`, a fresh iterator each
    time), the ``tasks`` they name, and how many jobs there are (``count``)."""

    source: Callable[[], Iterator[Entry]]
    tasks: frozenset[str]
    count: int
    requests: bool = False
    """Whether it cancels jobs or adds schedules (then final jobs are kept, as the
    journal keeps them, for the ids submitted or cancelled again)."""

    def jobs(self) -> Iterator[Entry]:
        """The entries again, from the first."""
        return self.source()


@dataclass(frozen=True)
class Generated:
    """The producer's flags (``python -m scheduler.producer --gauss ...``): ``count`` jobs,
    one every ``period`` seconds (gaussian around it with ``sigma`` when ``gauss``), with
    runtimes and priorities drawn from their spans by ``seed``; ``fail_rate``: the
    chance that a job's attempts fail (drawn from a generator of its own).

    ``every`` or ``cron`` (in ``tz``) also adds a schedule named ``periodic`` of
    ``task`` (as ``schedules add periodic --every``/``--cron`` would), its firings
    running the middle of the runtime span at the middle of the priority span, from the
    start until the last job is submitted."""

    count: int
    period: float = 5.0
    gauss: bool = False
    sigma: float = 2.0
    runtime: Span = Span(3, 15)
    priority: Span = Span(0, 10)
    timeout: float | None = None
    seed: int = 0
    task: str = "sleep"
    max_retries: int = 0
    retry_backoff: float = 1.0
    fail_rate: float = 0.0
    every: float | None = None
    cron: str | None = None
    tz: str = "UTC"

    def __post_init__(self) -> None:
        """Refuse values the producer would refuse, naming the flag."""
        if self.count < 1:
            raise ValueError(f"--count must be at least 1, not {self.count}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"--fail-rate must be within 0-1, not {self.fail_rate}")
        if self.priority.low < 0 or self.priority.high > 10:
            raise ValueError("--priority must be within 0-10")
        if self.runtime.low < 0:
            raise ValueError("--runtime must not be negative")
        self.schedule()

    def schedule(self) -> ScheduleSpec | None:
        """The ``periodic`` schedule ``every``/``cron`` ask for, or None; raises
        ValueError naming the flag of a bad one."""
        if self.every is None and self.cron is None:
            return None
        fields = {
            "name": "periodic",
            "task": self.task,
            "every": self.every,
            "cron": self.cron,
            "tz": self.tz,
            "runtime": (self.runtime.low + self.runtime.high) / 2,
            "priority": int(self.priority.low + self.priority.high) // 2,
            "timeout": self.timeout,
        }
        try:
            spec = msgspec.convert(fields, ScheduleSpec)
        except msgspec.ValidationError as exc:
            raise ValueError(f"--every/--cron: {exc}") from None
        problem = spec_problem(spec)
        if problem is not None:
            raise ValueError(f"--{problem[1]}")
        return spec

    def workload(self) -> Workload:
        """These jobs (and schedule) as a :class:`Workload`."""
        scheduled = self.every is not None or self.cron is not None
        return Workload(self._entries, frozenset({self.task}), self.count, scheduled)

    def _entries(self) -> Iterator[Entry]:
        spec = self.schedule()
        if spec is None:
            yield from self._jobs()
            return
        yield SimSchedule(0.0, spec)
        at = 0.0
        for job in self._jobs():
            at = job.at
            yield job
        yield SimUnschedule(at, spec.name)

    def _jobs(self) -> Iterator[SimJob]:
        # The producer's own generator and draw order: the same seed gives the same jobs
        # as `python -m scheduler.producer --seed`.
        rng = random.Random(self.seed)
        fails = random.Random(self.seed + 1)
        maker = JobMaker(
            self.runtime,
            self.priority,
            self.timeout,
            rng,
            self.max_retries,
            self.retry_backoff,
            task=self.task,
        )
        waits = periods(self.period, self.gauss, self.sigma, rng)
        at = 0.0
        for index in range(self.count):
            if index:
                at += next(waits)
            payload = maker.next(index)
            yield SimJob(at, payload, self.fail_rate > 0 and fails.random() < self.fail_rate)


class WorkloadError(ValueError):
    """A workload file that cannot be read; the message names the line and the field."""


_LINE_FIELDS = frozenset({"at", "fail", "id"})


def read_jsonl(path: Path) -> Workload:
    """Jobs from a JSON-lines file, one object per line: ``at`` (submit time, seconds,
    required), ``id`` (optional, for ``depends_on`` and cancels), ``fail`` (optional
    bool), and any field of a job payload (``task``, ``priority``, ``runtime``,
    ``timeout``, ``depends_on``, ``run_at`` in simulated seconds, ``max_retries``,
    ``broadcast``, ...); or a cancel or schedule line (:mod:`.entries`). Sorted by ``at``.
    Raises :class:`WorkloadError` naming the line and field of a bad entry."""
    entries: list[Entry] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            entries.extend(_parse_line(line, f"{path}:{number}"))
    return _fixed(entries)


def _parse_line(line: str, where: str) -> list[Entry]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise WorkloadError(f"{where}: not JSON: {exc}") from None
    if not isinstance(entry, dict):
        raise WorkloadError(f"{where}: must be a JSON object")
    at = entry.get("at")
    if isinstance(at, bool) or not isinstance(at, int | float) or at < 0:
        raise WorkloadError(f"{where}: at: must be a number of seconds >= 0, not {at!r}")
    try:
        if "cancel" in entry:
            return [cancel_entry(float(at), entry)]
        if "schedule" in entry:
            return list(schedule_entries(float(at), entry))
    except EntryError as exc:
        raise WorkloadError(f"{where}: {exc}") from None
    fail = entry.get("fail", False)
    if not isinstance(fail, bool):
        raise WorkloadError(f"{where}: fail: must be true or false, not {fail!r}")
    fields = {k: v for k, v in entry.items() if k not in _LINE_FIELDS}
    if "id" in entry:
        fields["job_id"] = entry["id"]
    return [SimJob(float(at), _payload(fields, where), fail)]


def _payload(fields: dict[str, Any], where: str) -> JobPayload:
    try:
        payload = msgspec.convert(fields, JobPayload)
    except msgspec.ValidationError as exc:
        raise WorkloadError(f"{where}: {exc}") from None
    if payload.task == "sleep" and payload.runtime is None:
        raise WorkloadError(f"{where}: runtime: a sleep job needs one")
    if isinstance(payload.run_at, str):
        raise WorkloadError(f"{where}: run_at: must be simulated seconds (a number)")
    return payload


def read_monitor(path: Path) -> Workload:
    """The jobs of a recorded live run: ``python -m scheduler.monitor --json`` output.
    Each job is submitted at its ``accepted`` event's time (the first one at 0) with its
    task, priority and runtime; a job without a runtime runs as long as its latest
    attempt took (``wall_s`` of its final event, else started to final); one that ended
    ``failed``, ``timed_out`` or ``dead`` fails. Raises :class:`WorkloadError` for a
    line that is not an event."""
    return _fixed(list(recorded_jobs(read_events(path))))


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events of ``monitor --json`` output, as dicts in file order. Raises
    :class:`WorkloadError` for a line that is not an event."""
    events: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkloadError(f"{path}:{number}: not JSON: {exc}") from None
        if not isinstance(event, dict) or not {"event", "id", "time"} <= event.keys():
            raise WorkloadError(f"{path}:{number}: not a monitor --json event")
        events.append(event)
    return events


def recorded_jobs(events: Sequence[dict[str, Any]]) -> list[SimJob]:
    """The jobs that ``events`` (monitor events as dicts, in order) show accepted."""
    accepted = [e for e in events if e["event"] == "accepted"]
    if not accepted:
        return []
    t0 = min(e["time"] for e in accepted)
    started: dict[str, float] = {}
    took: dict[str, float] = {}
    failed: set[str] = set()
    for e in events:
        if e["event"] == "started":
            started[e["id"]] = e["time"]
        elif e["event"] in ("succeeded", "failed", "timed_out", "dead"):
            span = e.get("wall_s")
            if span is None and e["id"] in started:
                span = e["time"] - started[e["id"]]
            if span is not None:
                took[e["id"]] = span
            if e["event"] != "succeeded":
                failed.add(e["id"])
    jobs = []
    for e in accepted:
        runtime = e.get("runtime")
        payload = JobPayload(
            priority=e.get("priority"),
            runtime=runtime if runtime is not None else took.get(e["id"], 0.0),
            task=e.get("task", "sleep"),
        )
        jobs.append(SimJob(e["time"] - t0, payload, e["id"] in failed))
    return jobs


def _fixed(entries: list[Entry]) -> Workload:
    entries.sort(key=lambda entry: entry.at)
    frozen = tuple(entries)
    jobs = [e for e in frozen if isinstance(e, SimJob)]
    tasks = {j.payload.task for j in jobs}
    tasks.update(e.spec.task for e in frozen if isinstance(e, SimSchedule))
    requests = len(jobs) < len(frozen)
    return Workload(lambda: iter(frozen), frozenset(tasks), len(jobs), requests)
