"""What a live job pays beyond its runtime, and how to read it off a recorded run.

A live scheduler forks each job's process in its event loop (so forks at one scheduler
happen one after the other) and reports ``started`` right after ``fork()`` returns; the
process then sets itself up, runs its task, exits, and is reaped before the closing
report goes and the runner fills the slot. The simulator models this with two costs
per scheduler (:class:`~scheduler.simulate.fleet.SchedulerSpec`):

- ``start_cost``: from the runner's start decision to the ``started`` report (the fork);
- ``exit_cost``: from the end of the job's runtime to its closing report and the freed
  slot (the child's setup and exit, the reap).

:func:`calibrate` derives both from the events of a recorded live run (``monitor --json``
output), all stamped by the bus on one clock:

- the exit cost of an attempt that ran to its end is ``final - started - runtime``
  (both reports travel the same way, so the message latency cancels);
- the start cost of an attempt that started at once is ``started - assigned - 2 *
  latency`` (the assignment's way there, the report's way back). An attempt "started at
  once" unless an attempt at the same scheduler ended (or was evicted) between its
  ``assigned`` and its ``started``: one that waited in the scheduler's queue can only
  have started when a slot was freed so. (An urgent job that evicts starts at once, the
  evicted one ending after it.)

Each cost is the median of its samples (robust to the shared machine's outliers); the
samples themselves can stand for the spread (:class:`~.fleet.JobCosts` draws from them).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scheduler.protocol_types import FINAL_EVENTS
from scheduler.simulate.fleet import JobCosts

DEFAULT_START_COST_S = 0.0
"""The start cost ``python -m scheduler.simulate`` assumes unless told (see the README)."""

DEFAULT_EXIT_COST_S = 0.0
"""The exit cost ``python -m scheduler.simulate`` assumes unless told (see the README)."""

_LEAVES = FINAL_EVENTS | {"evicted", "requeued", "retrying"}
"""Events after which an attempt is no longer held by its scheduler."""

_RAN_OUT = frozenset({"succeeded", "failed"})
"""Final events of an attempt whose process ended by itself (its runtime was over)."""


@dataclass(frozen=True)
class Calibration:
    """Costs read from a recording: the medians and the samples they come from (seconds)."""

    start_cost: float
    exit_cost: float
    start_samples: tuple[float, ...]
    exit_samples: tuple[float, ...]

    def costs(self, spread: bool = False) -> JobCosts:
        """The medians as a scheduler's costs; with ``spread``, each job draws its costs
        from the samples instead (those below 0, from clock noise, count as 0)."""
        if not spread:
            return JobCosts(self.start_cost, self.exit_cost)
        starts = tuple(max(0.0, s) for s in self.start_samples)
        exits = tuple(max(0.0, s) for s in self.exit_samples)
        return JobCosts(self.start_cost, self.exit_cost, starts, exits)

    def as_json(self) -> dict[str, Any]:
        """The costs, their sample counts and spread (p10/p90), as JSON-ready values."""
        return {
            "start_cost_s": self.start_cost,
            "exit_cost_s": self.exit_cost,
            "start": _spread(self.start_samples),
            "exit": _spread(self.exit_samples),
        }


def _spread(samples: Sequence[float]) -> dict[str, float | int]:
    if len(samples) < 2:
        return {"n": len(samples)}
    deciles = statistics.quantiles(samples, n=10)
    return {"n": len(samples), "p10": deciles[0], "p50": statistics.median(samples),
            "p90": deciles[-1]}  # fmt: skip


class CalibrationError(ValueError):
    """A recording that gives no sample of a cost; the message says which and why."""


def calibrate(events: Sequence[Mapping[str, Any]], latency: float) -> Calibration:
    """The start and exit costs of the recorded run ``events`` (monitor events as dicts,
    in any order), for a simulation whose messages take ``latency`` seconds each way.
    Raises :class:`CalibrationError` when the recording has no sample of a cost."""
    ordered = sorted(events, key=lambda e: e["time"])
    starts = start_samples(ordered, latency)
    exits = exit_samples(ordered)
    if not starts:
        raise CalibrationError("start cost: no attempt was assigned and started at once")
    if not exits:
        raise CalibrationError("exit cost: no attempt with a runtime ran to its end")
    return Calibration(
        max(0.0, statistics.median(starts)),
        max(0.0, statistics.median(exits)),
        tuple(starts),
        tuple(exits),
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


def start_samples(ordered: Sequence[Mapping[str, Any]], latency: float) -> list[float]:
    """``started - assigned - 2 * latency`` of each attempt that started at once (events
    in time order; see the module's docstring)."""
    pending: dict[str, tuple[str, float]] = {}
    samples: list[float] = []
    for e in ordered:
        kind, job, name = e["event"], e["id"], e.get("scheduler")
        if kind == "assigned" and name is not None:
            pending[job] = (name, e["time"])
        elif kind == "started" and job in pending:
            samples.append(e["time"] - pending.pop(job)[1] - 2 * latency)
        elif kind in _LEAVES:
            pending.pop(job, None)
            # A slot freed there: a job assigned there may have been waiting for it.
            for other in [j for j, (where, _) in pending.items() if where == name]:
                del pending[other]
    return samples
