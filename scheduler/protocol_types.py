"""The wire's vocabulary: size limits, the constrained field types every message uses,
job states and event kinds, and the checks that msgspec's constraints cannot say (an
ISO 8601 time with a zone, how deep a JSON value nests). No I/O."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

import msgspec

MAX_FRAME_BYTES: Final = 1024 * 1024
"""Frames larger than this are refused by the WebSocket layer (``max_size``)."""

MAX_RUNTIME_S: Final = 365 * 24 * 3600.0
MAX_TIMEOUT_S: Final = 365 * 24 * 3600.0
MAX_NAME_LEN: Final = 200
MAX_TASKS: Final = 1000
MAX_SIZE: Final = 4096
MAX_RETRIES: Final = 100
MAX_RESULT_BYTES: Final = 64 * 1024
"""A task's JSON result larger than this is refused (the job fails saying so)."""
MAX_BACKOFF_S: Final = 24 * 3600.0
MAX_BULK: Final = 100_000
MAX_COUNT: Final = 2**31 - 1
"""Most attempts, evictions or jobs a counter on the wire may say (far past any real one)."""
MAX_SAFE_INT: Final = 2**53 - 1
"""Largest integer every JSON reader keeps exact; bounds ``ref`` and sizes in KB."""
MAX_INT64: Final = 2**63 - 1
"""Largest integer the journal (SQLite INTEGER, signed 64-bit) stores."""
MAX_NESTING: Final = 64
"""Deepest nesting of arrays and objects in a task's ``args`` or ``result``."""
MAX_BATCH_MESSAGES: Final = 256
"""Most messages one ``batch`` frame carries (the bus packs no more; clients refuse more)."""
MAX_BATCH_BYTES: Final = 256 * 1024
"""Most bytes the bus packs into one ``batch`` frame; a bigger message travels alone."""
PRIORITY_MIN: Final = 0
PRIORITY_MAX: Final = 10
DEFAULT_PRIORITY: Final = 5
"""The priority of a job that gives none and whose task declares none."""

Priority = Annotated[int, msgspec.Meta(ge=PRIORITY_MIN, le=PRIORITY_MAX)]
"""0 is the most urgent, 10 the least."""
Runtime = Annotated[float, msgspec.Meta(gt=0, le=MAX_RUNTIME_S)]
Timeout = Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT_S)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LEN)]
Ref = (
    Annotated[str, msgspec.Meta(max_length=MAX_NAME_LEN)]
    | Annotated[int, msgspec.Meta(ge=-MAX_SAFE_INT, le=MAX_SAFE_INT)]
    | None
)
JobId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LEN)]
Attempt = Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
"""A count of attempts, evictions or jobs."""
ExitCode = Annotated[int, msgspec.Meta(ge=-MAX_COUNT - 1, le=MAX_COUNT)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
"""A finite duration (msgspec refuses a number out of float range: no inf, no NaN)."""
Args = dict[str, object] | list[object]

MAX_DELAY_S: Final = 366 * 24 * 3600.0
"""Longest ``delay`` and ``misfire_grace``; a ``run_at`` is at most this far from now."""
MAX_EPOCH_S: Final = 253402300799.0
"""9999-12-31T23:59:59Z: the latest ``run_at`` a payload may name."""
MAX_TIME_TEXT: Final = 64
RunAt = (
    Annotated[float, msgspec.Meta(ge=0, le=MAX_EPOCH_S)]
    | Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TIME_TEXT)]
)
"""An absolute time: epoch seconds, or ISO 8601 text with a zone."""
Delay = Annotated[float, msgspec.Meta(gt=0, le=MAX_DELAY_S)]
Grace = Annotated[float, msgspec.Meta(ge=0, le=MAX_DELAY_S)]

Role = Literal["producer", "scheduler", "monitor"]

EventKind = Literal[
    "accepted",
    "assigned",
    "started",
    "succeeded",
    "failed",
    "timed_out",
    "evicted",
    "requeued",
    "retrying",
    "cancelled",
    "dead",
    # delayed jobs (issue 11 item 1)
    "scheduled",
    "queued",
    "expired",
    # dependencies (scheduler.policy.dispatch.dependencies)
    "blocked",
    "skipped",
    # the retry command (scheduler.policy.dispatch.rerun)
    "retried",
    # progress and output from inside a running job (not journaled)
    "progress",
    "output",
]
"""What happened to a job.

``evicted``: a more urgent job took its slot; it is queued again (not a failure).
``requeued``: its scheduler was lost (lease expired); it is queued again.
``retrying``: an attempt failed or timed out and the job will run again after a backoff.
``dead``: it may not run again: retries exhausted, or delivered too many times.
``scheduled``: accepted to run later (``run_at``/``delay``); ``queued``: its time came.
``expired``: it was not handed to a scheduler within its ``misfire_grace`` of its time.
``blocked``: it waits for its dependencies (``depends_on``) to succeed.
``skipped``: a dependency ended without succeeding, so it never runs (the error names it).
``retried``: a final job was asked to run again (``retry``); it is queued for its next attempt.
``progress``: the running task reported how far it is (``progress``, ``message``).
``output``: the running task wrote to its stdout or stderr (``output``: the new text).
Neither changes the job's state, and neither is journaled.
"""

FINAL_EVENTS: Final[frozenset[str]] = frozenset(
    {"succeeded", "failed", "timed_out", "cancelled", "dead", "expired", "skipped"}
)
"""Events after which a job never runs again."""

SchedulerReport = Literal[
    "started",
    "succeeded",
    "failed",
    "timed_out",
    "evicted",
    "cancelled",
    "revoked",
    "progress",
    "output",
]
"""The events a scheduler may report about an attempt it holds. ``cancelled`` confirms a
:class:`Stop` sent for a cancel: the attempt's processes are gone. ``revoked`` confirms a
``stolen`` stop: the attempt left the local queue without starting. ``progress`` and
``output`` come while the attempt runs (rate-limited by the scheduler) and change nothing
but what the bus shows of it."""

TRANSIENT_EVENTS: Final[frozenset[str]] = frozenset({"progress", "output"})
"""Reports (and the events they become) about a running attempt that change nothing
the journal keeps."""

MAX_PROGRESS_MESSAGE_BYTES: Final = 1024
"""Longest progress message, in bytes of UTF-8."""
MAX_OUTPUT_BYTES: Final = 4096
"""Most output one ``output`` report or event carries, and the tail kept with a final
event, in bytes of UTF-8."""
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
"""How far a job is, from 0.0 to 1.0."""
ProgressMessage = Annotated[str, msgspec.Meta(max_length=MAX_PROGRESS_MESSAGE_BYTES)]
"""A progress message (msgspec counts characters: the bytes bound is the sender's)."""
OutputText = Annotated[str, msgspec.Meta(max_length=MAX_OUTPUT_BYTES)]
"""A job's output text, at most :data:`MAX_OUTPUT_BYTES` characters."""

JobState = Literal[
    "scheduled",
    "queued",
    "assigned",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "dead",
    "expired",
    # dependencies
    "blocked",
    "skipped",
]


OnDependencyFailure = Literal["skip", "run"]
"""What a job does when one of its dependencies ends without succeeding: end
``skipped`` (the default) or run anyway."""

MAX_DEPENDS: Final = 1000
"""The most dependencies one job may name."""

OnConflict = Literal["raise", "ignore", "replace"]
"""What a submit whose ``job_id`` exists does: refuse (``raise``), return the existing
job (``ignore``), or replace it if it has not started running (``replace``)."""


def parse_run_at(text: str) -> float:
    """Epoch seconds of ISO 8601 ``text``; raise ValueError naming ``run_at`` if it has
    no zone (a naive time means a different instant on every machine) or is not ISO 8601."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"run_at: not an ISO 8601 time: {text!r}") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(
            f"run_at: {text!r} has no zone; an ISO 8601 time must carry one (Z or +HH:MM)"
        )
    return when.timestamp()


def check_nesting(name: str, value: object) -> None:
    """Raise ValueError if ``value`` nests arrays and objects deeper than :data:`MAX_NESTING`."""
    if not isinstance(value, list | dict):
        return  # most payloads have no args: the commonest check is the cheapest
    level: list[object] = [value]
    for _ in range(MAX_NESTING):
        level = [
            item
            for container in level
            if isinstance(container, list | dict)
            for item in (container.values() if isinstance(container, dict) else container)
        ]
        if not level:
            return
    if any(isinstance(item, list | dict) for item in level):
        raise ValueError(f"{name}: nesting deeper than {MAX_NESTING} levels")
