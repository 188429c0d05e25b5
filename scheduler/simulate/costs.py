"""What a live job pays beyond its runtime, and how to read it off a recorded run.

A live bus holds every frame it sends until the journal commit covering it is done; a
live scheduler forks each job's process in its event loop (so forks at one scheduler
happen one after the other) and reports ``started`` right after ``fork()`` returns; the
process then sets itself up, runs its task, exits, and is reaped before the closing
report goes and the runner fills the slot. The simulator models this with four costs
per scheduler (:class:`~scheduler.simulate.fleet.JobCosts`):

- ``dispatch``: how much later than the simulation's latency a message from the bus (an
  assignment, a stop) is taken by the scheduler (the commit, the wake-ups);
- ``start``: from the runner's start decision to the ``started`` report (the fork);
- ``exit``: from the end of the job's runtime to its closing report and the freed slot
  (the child's setup and exit, the reap);
- ``evict``: how long an eviction keeps the scheduler busy before its next fork (the
  job that evicted reports ``started`` that much later; the evicted one ends after).

:func:`calibrate` derives them from the events of a recorded live run (``monitor --json``
output), all stamped by the bus when it handled them, on one clock:

- ``exit``: ``final - started - runtime`` of each attempt that ran to its end (both
  reports travel the same way, so the way cancels out);
- ``start``: ``started - final`` for a job that waited in a scheduler's own queue and
  started when a job there ended (the ``final`` report and the ``started`` one leave
  the scheduler one after the other, so only the fork lies between them);
- ``dispatch``: ``started - assigned - 2 * latency - start`` of each attempt that started
  at once and evicted none: unless an attempt at the same scheduler ended (or was
  evicted) between its ``assigned`` and its ``started``, it did not wait for a slot;
- ``evict``: how much longer an attempt that started at once took when it evicted
  another (the next ``evicted`` at its scheduler came before any other start there:
  an urgent job starts at once in the place of the evicted one, which ends after it),
  over the median of those that evicted none. It is never drawn (:meth:`Calibration.costs`
  keeps the median): it comes on top of a drawn dispatch cost, and drawing both would
  count the spread of the way there twice.

Each cost is the median of its samples (robust to the shared machine's outliers); the
samples themselves can stand for the spread (:meth:`Calibration.costs` with ``spread``).
A recording in which no job ever waited in a scheduler's queue cannot tell the fork from
the way there: its start cost is then 0 and the dispatch cost carries both.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from scheduler.protocol_types import FINAL_EVENTS
from scheduler.simulate.fleet import JobCosts

# The defaults: calibrate() over eight recorded rounds of the bench's fidelity workload
# (2,400 jobs; two rounds at 80% load, six at 70%; three `test_scheduler -s 2` on one
# bus) on this 2-core machine while six sessions shared it; a quiet machine pays less.
DEFAULT_START_COST_S = 0.00025
"""The start cost ``python -m scheduler.simulate`` assumes unless told (measured)."""

DEFAULT_EXIT_COST_S = 0.013
"""The exit cost ``python -m scheduler.simulate`` assumes unless told (measured)."""

DEFAULT_DISPATCH_COST_S = 0.014
"""The dispatch cost ``python -m scheduler.simulate`` assumes unless told (measured)."""

DEFAULT_EVICT_COST_S = 0.010
"""The eviction cost ``python -m scheduler.simulate`` assumes unless told (measured)."""

_LEAVES = FINAL_EVENTS | {"evicted", "requeued", "retrying"}
"""Events after which an attempt is no longer held by its scheduler."""

_RAN_OUT = frozenset({"succeeded", "failed"})
"""Final events of an attempt whose process ended by itself (its runtime was over)."""


@dataclass(frozen=True)
class Calibration:
    """Costs read from a recording: the medians and the samples they come from (seconds)."""

    start_cost: float
    exit_cost: float
    dispatch_cost: float
    start_samples: tuple[float, ...]
    exit_samples: tuple[float, ...]
    dispatch_samples: tuple[float, ...]
    evict_cost: float = 0.0
    evict_samples: tuple[float, ...] = ()

    def costs(self, spread: bool = False, seed: int = 0) -> JobCosts:
        """The medians as a scheduler's costs; with ``spread``, each job draws its costs
        from the samples instead (by ``seed``; those below 0, from clock noise, count as
        0)."""
        medians = JobCosts(
            self.start_cost, self.exit_cost, dispatch=self.dispatch_cost, evict=self.evict_cost
        )
        if not spread:
            return medians
        return replace(
            medians,
            start_draws=_clipped(self.start_samples),
            exit_draws=_clipped(self.exit_samples),
            dispatch_draws=_clipped(self.dispatch_samples),
            seed=seed,
        )

    def as_json(self) -> dict[str, Any]:
        """The costs, their sample counts and spread (p10/p50/p90), as JSON-ready values."""
        return {
            "start_cost_s": self.start_cost,
            "exit_cost_s": self.exit_cost,
            "dispatch_cost_s": self.dispatch_cost,
            "evict_cost_s": self.evict_cost,
            "start": _spread(self.start_samples),
            "exit": _spread(self.exit_samples),
            "dispatch": _spread(self.dispatch_samples),
            "evict": _spread(self.evict_samples),
        }


def _clipped(samples: Sequence[float]) -> tuple[float, ...]:
    return tuple(max(0.0, s) for s in samples)


def _spread(samples: Sequence[float]) -> dict[str, float | int]:
    if len(samples) < 2:
        return {"n": len(samples)}
    deciles = statistics.quantiles(samples, n=10)
    return {"n": len(samples), "p10": deciles[0], "p50": statistics.median(samples),
            "p90": deciles[-1]}  # fmt: skip


class CalibrationError(ValueError):
    """A recording that gives no sample of a cost; the message says which and why."""


def calibrate(events: Sequence[Mapping[str, Any]], latency: float) -> Calibration:
    """The costs of the recorded run ``events`` (monitor events as dicts, in any order),
    for a simulation whose messages take ``latency`` seconds each way. Raises
    :class:`CalibrationError` when the recording has no sample of the exit cost or of
    an attempt that started at once."""
    ordered = sorted(events, key=lambda e: e["time"])
    exits = exit_samples(ordered)
    if not exits:
        raise CalibrationError("exit cost: no attempt with a runtime ran to its end")
    forks = fork_samples(ordered)
    start = statistics.median(forks) if forks else 0.0
    plain, evicting = start_gaps(ordered)
    ways = [gap - 2 * latency - start for gap in plain]
    if not ways:
        raise CalibrationError("dispatch cost: no attempt was assigned and started at once")
    usual = statistics.median(plain)
    evicts = [gap - usual for gap in evicting]
    return Calibration(
        max(0.0, start),
        max(0.0, statistics.median(exits)),
        max(0.0, statistics.median(ways)),
        tuple(forks),
        tuple(exits),
        tuple(ways),
        max(0.0, statistics.median(evicts)) if evicts else 0.0,
        tuple(evicts),
    )


def exit_samples(ordered: Sequence[Mapping[str, Any]]) -> list[float]:
    """``final - started - runtime`` of each attempt that ran out by itself (events in
    time order)."""
    runtime: dict[str, float] = {}
    started: dict[str, float] = {}
    samples: list[float] = []
    for e in ordered:
        kind, job = e["event"], e["id"]
        if e.get("runtime") is not None:
            runtime.setdefault(job, e["runtime"])
        if kind == "started":
            started[job] = e["time"]
        elif kind in _RAN_OUT and job in started and job in runtime:
            samples.append(e["time"] - started[job] - runtime[job])
        if kind in _LEAVES:
            started.pop(job, None)
    return samples


def fork_samples(ordered: Sequence[Mapping[str, Any]]) -> list[float]:
    """``started - final`` of each attempt that waited in its scheduler's queue and
    started after an attempt there ended (events in time order): the latest such end."""
    assigned: dict[str, tuple[str, float]] = {}
    ended: dict[str, float] = {}
    samples: list[float] = []
    for e in ordered:
        kind, job, name = e["event"], e["id"], e.get("scheduler")
        if kind == "assigned" and name is not None:
            assigned[job] = (name, e["time"])
        elif kind == "started" and job in assigned:
            where, since = assigned.pop(job)
            end = ended.get(where)
            if end is not None and end > since:
                samples.append(e["time"] - end)
        elif kind in FINAL_EVENTS and name is not None:
            ended[name] = e["time"]
    return samples


def start_gaps(ordered: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[float]]:
    """``started - assigned`` of each attempt that started at once (events in time
    order; see the module's docstring): of those that evicted another (the next
    ``evicted`` at that scheduler came before any other start there), and of the others."""
    pending: dict[str, tuple[str, float]] = {}
    samples: list[float] = []
    evicting: set[int] = set()
    latest: dict[str, int | None] = {}
    for e in ordered:
        kind, job, name = e["event"], e["id"], e.get("scheduler")
        if kind == "assigned" and name is not None:
            pending[job] = (name, e["time"])
        elif kind == "started" and name is not None:
            latest[name] = None
            if job in pending:
                latest[name] = len(samples)
                samples.append(e["time"] - pending.pop(job)[1])
        if kind == "evicted" and name is not None:
            index = latest.pop(name, None)
            if index is not None:
                evicting.add(index)
        if kind in _LEAVES:
            pending.pop(job, None)
            # A slot freed there: a job assigned there may have been waiting for it.
            for other in [j for j, (where, _) in pending.items() if where == name]:
                del pending[other]
    plain = [gap for index, gap in enumerate(samples) if index not in evicting]
    return plain, [samples[index] for index in sorted(evicting)]
