"""What a simulation submits, and when: the producer's random jobs, a JSON-lines file of
jobs, or the jobs of a recorded live run (``monitor --json`` output).

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

from scheduler.producer.workload import JobMaker, Span, periods
from scheduler.protocol import JobPayload


@dataclass(frozen=True, slots=True)
class SimJob:
    """One submit: ``payload`` reaches the bus at ``at``; ``fail``: each attempt of it
    ends ``failed`` (exit code 1) instead of succeeding."""

    at: float
    payload: JobPayload
    fail: bool = False


@dataclass(frozen=True)
class Workload:
    """Jobs in submit order (:meth:`jobs`, a fresh iterator each time), the ``tasks`` they
    name, and how many there are (``count``)."""

    source: Callable[[], Iterator[SimJob]]
    tasks: frozenset[str]
    count: int

    def jobs(self) -> Iterator[SimJob]:
        """The jobs again, from the first."""
        return self.source()


@dataclass(frozen=True)
class Generated:
    """The producer's flags (``python -m scheduler.producer --gauss ...``): ``count`` jobs,
    one every ``period`` seconds (gaussian around it with ``sigma`` when ``gauss``), with
    runtimes and priorities drawn from their spans by ``seed``; ``fail_rate``: the
    chance that a job's attempts fail (drawn from a generator of its own)."""

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

    def workload(self) -> Workload:
        """These jobs as a :class:`Workload`."""
        return Workload(self._jobs, frozenset({self.task}), self.count)

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
    required), ``id`` (optional, for ``depends_on``), ``fail`` (optional bool), and any
    field of a job payload (``task``, ``priority``, ``runtime``, ``timeout``,
    ``depends_on``, ``run_at`` in simulated seconds, ``max_retries``, ...). Sorted by
    ``at``. Raises :class:`WorkloadError` naming the line and field of a bad entry."""
    jobs: list[SimJob] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            jobs.append(_parse_line(line, f"{path}:{number}"))
    return _fixed(jobs)


def _parse_line(line: str, where: str) -> SimJob:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise WorkloadError(f"{where}: not JSON: {exc}") from None
    if not isinstance(entry, dict):
        raise WorkloadError(f"{where}: must be a JSON object")
    at = entry.get("at")
    if isinstance(at, bool) or not isinstance(at, int | float) or at < 0:
        raise WorkloadError(f"{where}: at: must be a number of seconds >= 0, not {at!r}")
    fail = entry.get("fail", False)
    if not isinstance(fail, bool):
        raise WorkloadError(f"{where}: fail: must be true or false, not {fail!r}")
    fields = {k: v for k, v in entry.items() if k not in _LINE_FIELDS}
    if "id" in entry:
        fields["job_id"] = entry["id"]
    return SimJob(float(at), _payload(fields, where), fail)


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
    return _fixed(recorded_jobs(read_events(path)))


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


def _fixed(jobs: list[SimJob]) -> Workload:
    jobs.sort(key=lambda job: job.at)
    frozen = tuple(jobs)
    return Workload(lambda: iter(frozen), frozenset(j.payload.task for j in frozen), len(frozen))
