"""Broadcast jobs: one run per scheduler serving the task at submit, each pinned to it.

A ``broadcast: true`` submit makes a parent job and one run per connected v2 scheduler
serving its task (:func:`targets`), with id ``ID/scheduler`` (:func:`run_id`) and a
payload pinned there (:func:`run_payload`). The parent is ``blocked`` on its runs (the
bookkeeping of :mod:`.dependencies`) and ends when the last one does
(:func:`parent_outcome`): ``succeeded`` if every run succeeded (its result maps each run
to its result), else ``failed`` naming the runs that did not (``cancelled`` if they were
all cancelled: cancelling the parent cancels its runs). A pinned run is placed
only on its scheduler and never stolen; if the bus forgets that scheduler (its lease
expired, or it closed cleanly) a run still waiting ends ``dead`` (:func:`gone_error`).

The parent's ``depends_on`` lists its runs (:func:`parent_payload`, set by the bus): its
journal record then says what it waits for, so a restarted bus looks them up like any
dependencies (:func:`.dependencies.restore_ids`) and books the parent on the runs still
open, or ends it at once from the runs' records if they all ended while it was down
(:func:`restore_runs`). No journal schema change: the payload is already stored.

Pure: no clock needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import msgspec

from scheduler.policy.dispatch.dependencies import Refusal
from scheduler.policy.job import Job
from scheduler.protocol import JobPayload
from scheduler.protocol_types import MAX_DEPENDS, EventKind

MISSING: Final = "missing from the journal"
"""The state a restored parent counts for a run the journal no longer has."""


def run_id(parent: str, scheduler: str) -> str:
    """The id of ``parent``'s run on ``scheduler``."""
    return f"{parent}/{scheduler}"


def check(payload: JobPayload, prefix: str, serving: list[str]) -> Refusal | None:
    """Why a submit's ``broadcast``/``pin`` is refused (naming the field), given the v2
    schedulers ``serving`` its task now; None if it is accepted."""
    if payload.pin is not None:
        where = f"{prefix}.pin"
        return Refusal(f"{where}: set by the bus for the runs of a broadcast", where)
    if not payload.broadcast:
        return None
    where = f"{prefix}.broadcast"
    if payload.depends_on:
        return Refusal(f"{where}: a broadcast cannot have depends_on", where)
    if not serving:
        return Refusal(
            f'{where}: no connected scheduler serves task "{payload.task}"; a broadcast runs'
            " on the schedulers serving its task when it is submitted",
            where,
        )
    if len(serving) > MAX_DEPENDS:
        return Refusal(
            f'{where}: {len(serving)} schedulers serve task "{payload.task}"; a broadcast'
            f" runs on at most {MAX_DEPENDS} (its depends_on lists its runs)",
            where,
        )
    return None


def targets(schedulers: Iterable[tuple[str, bool, bool, Iterable[str]]], task: str) -> list[str]:
    """The names, sorted, of the schedulers a broadcast of ``task`` runs on, from
    ``(name, connected, reports, tasks)``: connected v2 ones serving it (a v1 scheduler
    never reports, so its run could never end)."""
    return sorted(
        name
        for name, connected, reports, tasks in schedulers
        if connected and reports and task in tasks
    )


def run_payload(payload: JobPayload, parent: str, scheduler: str) -> JobPayload:
    """The payload of ``parent``'s run on ``scheduler``: the same job, pinned there."""
    return msgspec.structs.replace(
        payload, broadcast=False, pin=scheduler, job_id=run_id(parent, scheduler)
    )


def parent_payload(payload: JobPayload, runs: list[str]) -> JobPayload:
    """The payload of a broadcast parent whose runs are ``runs``: ``depends_on`` lists them."""
    return msgspec.structs.replace(payload, depends_on=runs)


@dataclass(frozen=True, slots=True)
class Restored:
    """How a restored parent's runs stand: those still open (``pending``), the states
    of those that ended (``states``: run id: state) and the results of those that
    succeeded (``results``)."""

    pending: tuple[str, ...] = ()
    states: dict[str, str] = field(default_factory=dict)
    results: dict[str, object] = field(default_factory=dict)


def restore_runs(parent: JobPayload, lookup: Callable[[str], Job | None]) -> Restored:
    """How the runs of restored broadcast ``parent`` stand: ``lookup`` finds the
    restored runs and the journal records of the others; a run the journal no longer
    has counts as ended :data:`MISSING`."""
    pending: list[str] = []
    states: dict[str, str] = {}
    results: dict[str, object] = {}
    for run in parent.depends_on or ():
        job = lookup(run)
        if job is None:
            states[run] = MISSING
        elif not job.final:
            pending.append(run)
        else:
            states[run] = job.state
            if job.state == "succeeded":
                results[run] = job.result
    return Restored(tuple(pending), states, results)


def unrecorded_error(parent: str) -> str:
    """The error of a broadcast restored from a journal record that lists no runs."""
    return (
        f"broadcast {parent} was journaled without its runs (by a bus from before they were"
        " recorded): its outcome is unknown; see its runs ID/scheduler"
    )


def parent_outcome(states: Mapping[str, str]) -> tuple[EventKind, str | None]:
    """The final state of a broadcast whose runs ended in ``states`` (run id: state),
    and the error naming the runs that did not succeed: ``cancelled`` if every one of
    those was cancelled (a cancelled broadcast), else ``failed``."""
    bad = {run: state for run, state in sorted(states.items()) if state != "succeeded"}
    if not bad:
        return "succeeded", None
    named = ", ".join(f"{run} {state}" for run, state in bad.items())
    error = f"{len(bad)} of {len(states)} runs did not succeed: {named}"
    return ("cancelled" if set(bad.values()) == {"cancelled"} else "failed"), error


def gone_error(scheduler: str) -> str:
    """The error of a pinned run whose scheduler the bus forgot."""
    return f"its scheduler {scheduler} is gone (lease expired or closed); a broadcast run is pinned"
