"""Every wire message as a typed struct: decoding validates, encoding is one call. No I/O.

Two dialects share one WebSocket endpoint:

* **v1** (the original prototype, kept byte for byte): ``register`` with a ``type``,
  ``job_request`` with a bare ``{"priority", "runtime"}`` payload, and a v1 scheduler
  receives that bare payload. A v1 producer never reads.
* **v2**: ``register`` carries ``"protocol": 2``; every submit is answered
  (``accepted`` or ``error``), jobs carry ids, and events flow back.

Client to bus messages are tagged by ``cmd``; bus to client messages by ``type``.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from scheduler.protocol_assign import Assign as Assign
from scheduler.protocol_assign import Assignment as Assignment
from scheduler.protocol_assign import Release as Release
from scheduler.protocol_assign import Stop as Stop
from scheduler.protocol_assign import StopKind as StopKind
from scheduler.protocol_leader import NotLeader
from scheduler.protocol_queries import GetStats, ListJobs, Retry, Vacuum, Vacuumed
from scheduler.protocol_schedules import (
    MAX_SCHEDULES,
    ScheduleAdd,
    ScheduleChange,
    ScheduleQuery,
    Schedules,
    ScheduleSpec,
)
from scheduler.protocol_stats import StatsReply
from scheduler.protocol_types import (
    MAX_BACKOFF_S,
    MAX_BULK,
    MAX_DEPENDS,
    MAX_NAME_LEN,
    MAX_RETRIES,
    MAX_SAFE_INT,
    MAX_SIZE,
    MAX_TASKS,
    MAX_TIMEOUT_S,
    Args,
    Attempt,
    Count,
    Delay,
    EventKind,
    ExitCode,
    Fraction,
    Grace,
    JobId,
    JobState,
    Name,
    OnConflict,
    OnDependencyFailure,
    OutputText,
    Priority,
    ProgressMessage,
    Ref,
    Role,
    RunAt,
    Runtime,
    SchedulerReport,
    Seconds,
    Timeout,
    check_nesting,
    parse_run_at,
)


class JobPayload(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, gc=False
):
    """What a producer asks to run. v1 sends only ``priority`` and ``runtime``.

    ``task`` names a registered function; ``args`` (a JSON object, passed as keyword
    arguments, or a JSON array, passed positionally) are its arguments. The built-in
    ``sleep`` task needs ``runtime`` and sleeps that long; other tasks may leave it out.
    A job without ``priority`` gets its task's default (``@task(priority=...)``, as the
    schedulers serving it declared it), else :data:`DEFAULT_PRIORITY`; a job without
    ``timeout`` gets its task's default, else the scheduler's ``-t``.

    ``job_id`` lets the client choose the id (idempotent submits, see ``on_conflict``);
    it may not hold ``@`` or ``/``, which mark the ids the bus makes (schedule firings,
    broadcast runs): see :mod:`scheduler.policy.conflict`.
    A failed or timed-out attempt is retried up to ``max_retries`` times, the n-th retry
    after about ``retry_backoff * 2**(n-1)`` seconds (with jitter).

    ``depends_on`` lists job ids (or client ids of the same batch) that must succeed
    before the job is queued; it is ``blocked`` until then. If one ends otherwise the
    job ends ``skipped``, unless ``on_dependency_failure`` is ``"run"``.
    ``pass_results``: the task gets a ``results`` keyword argument,
    ``{dependency id: result}``.

    ``broadcast``: run once on every v2 scheduler serving ``task`` at submit; each run
    is a job ``ID/scheduler`` whose ``pin`` names the only scheduler it may run on (the
    bus sets ``pin``; a producer may not).

    Not tracked by the garbage collector (``gc=False``: 16 bytes less for each of a
    million queued jobs): a payload is frozen and holds only decoded JSON, so it is never
    part of a reference cycle.
    """

    priority: Priority | None = None
    runtime: Runtime | None = None
    task: Name = "sleep"
    args: Args | None = None
    timeout: Timeout | None = None
    job_id: JobId | None = None
    on_conflict: OnConflict = "raise"
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=MAX_RETRIES)] = 0
    retry_backoff: Annotated[float, msgspec.Meta(ge=0, le=MAX_BACKOFF_S)] = 1.0
    # delayed jobs (issue 11 item 1): see :mod:`scheduler.policy.dispatch.timers`
    run_at: RunAt | None = None
    delay: Delay | None = None
    misfire_grace: Grace | None = None
    # dependencies (scheduler.policy.dispatch.dependencies)
    depends_on: Annotated[list[JobId], msgspec.Meta(max_length=MAX_DEPENDS)] | None = None
    on_dependency_failure: OnDependencyFailure = "skip"
    pass_results: bool = False
    # broadcast (scheduler.policy.dispatch.broadcast)
    broadcast: bool = False
    pin: Name | None = None

    def __post_init__(self) -> None:
        """Refuse ``args`` nested deeper than :data:`MAX_NESTING`, a naive or unreadable
        ``run_at`` text, ``run_at`` with ``delay``, and a time with ``depends_on`` (a
        blocked job runs when its dependencies let it, not at a time)."""
        check_nesting("args", self.args)
        if self.run_at is not None and self.delay is not None:
            raise ValueError("delay: give run_at or delay, not both")
        if self.depends_on and (self.run_at is not None or self.delay is not None):
            field = "run_at" if self.run_at is not None else "delay"
            raise ValueError(f"{field}: a job with depends_on runs when its dependencies allow")
        if isinstance(self.run_at, str):
            parse_run_at(self.run_at)


# --- client -> bus -------------------------------------------------------------------


class Held(msgspec.Struct, frozen=True, omit_defaults=True):
    """An attempt a re-registering scheduler still has: running or waiting in its local
    queue (``done`` False), or finished with its report waiting in the outbox (``done``)."""

    id: JobId
    attempt: Attempt
    done: bool = False


class Register(msgspec.Struct, frozen=True, tag_field="cmd", tag="register", omit_defaults=True):
    """A client announces its role. v1 sends only ``type``.

    A scheduler lists the ``tasks`` it serves, and in ``priorities`` the default priority
    of those that declare one (for jobs that give none).
    A scheduler that reconnects sends the same ``name`` and lists in ``held`` every
    attempt it still has; the bus answers :class:`Stop` for those it no longer holds,
    and the scheduler then sends the reports kept in its outbox. It also sends the
    ``secret`` its first :class:`Registered` gave it: a scheduler's name is its identity,
    and only the holder of that secret may take a name that is still live.
    A scheduler also sends the ``schedules`` its tasks declare; the bus adds or updates
    each by name, but never one an admin added (``schedule_add``).
    """

    type: Role
    protocol: Annotated[int, msgspec.Meta(ge=1, le=2)] = 1
    name: Name | None = None
    token: Annotated[str, msgspec.Meta(max_length=MAX_NAME_LEN)] | None = None
    size: Annotated[int, msgspec.Meta(ge=1, le=MAX_SIZE)] | None = None
    tasks: Annotated[list[Name], msgspec.Meta(max_length=MAX_TASKS)] | None = None
    priorities: Annotated[dict[Name, Priority], msgspec.Meta(max_length=MAX_TASKS)] | None = None
    held: Annotated[list[Held], msgspec.Meta(max_length=MAX_BULK)] | None = None
    secret: Annotated[str, msgspec.Meta(max_length=MAX_NAME_LEN)] | None = None
    schedules: Annotated[list[ScheduleSpec], msgspec.Meta(max_length=MAX_SCHEDULES)] | None = None
    batch: bool = False
    """A v2 client that decodes :class:`~scheduler.protocol_batch.Batch` frames: the bus
    may then send it the messages ready in one loop turn as one frame."""
    hold: bool = False
    """A v2 scheduler that takes held assignments (:class:`Assign` with ``hold``), each
    started only once its :class:`Release` comes."""


class JobRequest(
    msgspec.Struct, frozen=True, tag_field="cmd", tag="job_request", omit_defaults=True
):
    """Submit one job. A v2 producer may add ``ref`` to match the reply to the request."""

    payload: JobPayload
    ref: Ref = None


class Report(msgspec.Struct, frozen=True, tag_field="cmd", tag="report", omit_defaults=True):
    """A v2 scheduler tells the bus what happened to an attempt it holds.

    ``succeeded`` may carry the task's JSON ``result``; ``failed`` by an exception carries
    ``error`` (``Type: message``) and its ``traceback``. ``progress`` carries ``progress``
    and ``message``; ``output`` carries the new ``output``; a closing report carries the
    last of the attempt's ``output`` (its tail).
    """

    event: SchedulerReport
    id: JobId
    attempt: Attempt
    exit_code: ExitCode | None = None
    error: Annotated[str, msgspec.Meta(max_length=64 * 1024)] | None = None
    evictions: Count | None = None
    wall_s: Seconds | None = None
    cpu_s: Seconds | None = None
    max_rss_kb: Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INT)] | None = None
    result: object | None = None
    traceback: Annotated[str, msgspec.Meta(max_length=64 * 1024)] | None = None
    progress: Fraction | None = None
    message: ProgressMessage | None = None
    output: OutputText | None = None

    def __post_init__(self) -> None:
        """Refuse a ``result`` nested deeper than :data:`MAX_NESTING`."""
        check_nesting("result", self.result)


class SubmitMany(
    msgspec.Struct, frozen=True, tag_field="cmd", tag="submit_many", omit_defaults=True
):
    """Submit many jobs at once, journaled in one transaction. Each element is decoded on
    its own (:func:`decode_payload`) so one bad job gets its own error, not the batch's."""

    jobs: Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_BULK)]
    ref: Ref = None


class Cancel(msgspec.Struct, frozen=True, tag_field="cmd", tag="cancel", omit_defaults=True):
    """Cancel a job: a queued one at once, a running one once its processes are stopped."""

    id: JobId
    ref: Ref = None


class Watch(msgspec.Struct, frozen=True, tag_field="cmd", tag="watch", omit_defaults=True):
    """Subscribe to the events of jobs by id (e.g. after a reconnect) and get their
    current state in the reply, final ones included."""

    ids: Annotated[list[JobId], msgspec.Meta(max_length=MAX_BULK)]
    ref: Ref = None


class Heartbeat(msgspec.Struct, frozen=True, tag_field="cmd", tag="heartbeat"):
    """A v2 scheduler's periodic sign of life with its load."""

    running: Count = 0
    queued: Count = 0


ClientMessage = (
    Register
    | JobRequest
    | SubmitMany
    | Cancel
    | Watch
    | Vacuum
    | GetStats
    | Report
    | Heartbeat
    | ListJobs
    | Retry
    | ScheduleAdd
    | ScheduleChange
    | ScheduleQuery
)


# --- bus -> client -------------------------------------------------------------------


class Registered(msgspec.Struct, frozen=True, tag_field="type", tag="registered"):
    """The bus's answer to a v2 ``register``: the name it knows the client by, and (for
    schedulers) how long it may go without a heartbeat before losing its jobs, and the
    ``secret`` that proves its identity when it registers again under that name."""

    name: str
    protocol: int = 2
    lease_s: float | None = None
    secret: str | None = None
    batch: bool = False
    """The bus reads :class:`ClientBatch` frames from this client (a bus that does not
    say so gets one message per frame)."""


class Restarting(msgspec.Struct, frozen=True, tag_field="type", tag="restarting"):
    """The bus is shutting down for a restart: the v2 scheduler keeps running its jobs
    (and keeps its reports) for up to ``keep_s`` seconds instead of fencing them after its
    lease; the restarted bus keeps them held by it until then."""

    keep_s: Annotated[float, msgspec.Meta(ge=0, le=MAX_TIMEOUT_S)]


class Accepted(msgspec.Struct, frozen=True, tag_field="type", tag="accepted", omit_defaults=True):
    """A submit was accepted (journaled): ``id`` names the job from now on. ``existing``:
    the id was taken and ``on_conflict`` was ``ignore``; ``replaced``: it was ``replace``.
    ``warning``: accepted, but something the producer should know (no connected scheduler
    serves its task, so it waits until one registers)."""

    id: str
    ref: Ref = None
    existing: bool = False
    replaced: bool = False
    warning: str | None = None
    runs: list[str] | None = None
    """A broadcast's runs (``ID/scheduler``), each with its own events."""


class SubmitResult(msgspec.Struct, frozen=True, omit_defaults=True):
    """One job of a :class:`SubmitMany`: its id, or the error that refused it; ``warning``
    as in :class:`Accepted`."""

    id: str | None = None
    error: str | None = None
    field: str | None = None
    existing: bool = False
    replaced: bool = False
    warning: str | None = None
    runs: list[str] | None = None


class SubmittedMany(
    msgspec.Struct, frozen=True, tag_field="type", tag="submitted_many", omit_defaults=True
):
    """The answer to :class:`SubmitMany`: one result per job, in order."""

    results: list[SubmitResult]
    ref: Ref = None


class CancelReply(
    msgspec.Struct, frozen=True, tag_field="type", tag="cancel_reply", omit_defaults=True
):
    """The answer to :class:`Cancel`. ``state`` is the job's state after the request
    (``cancelled``, or ``running`` while its processes are being stopped, or the final
    state it already had: then ``message`` says that nothing was done)."""

    id: str
    state: str
    message: str
    ref: Ref = None


class Error(msgspec.Struct, frozen=True, tag_field="type", tag="error", omit_defaults=True):
    """A frame was refused. ``field`` is a dotted path into the frame, when one is to blame."""

    message: str
    field: str | None = None
    ref: Ref = None


class JobEvent(msgspec.Struct, frozen=True, tag_field="type", tag="event", omit_defaults=True):
    """Something happened to a job; sent to its producer, its watchers and every monitor.

    ``errors`` lists the error of every failed attempt (on ``retrying`` and final events);
    ``retry_in_s`` says when a ``retrying`` job runs again. ``result`` is the task's JSON
    result (on ``succeeded``); ``traceback`` the traceback of the exception that failed the
    latest failed attempt (on ``failed``, ``retrying`` and ``dead``, and on ``cancelled``
    after such a failure; never on ``succeeded``).
    """

    event: EventKind
    id: str
    priority: int
    state: JobState
    time: float
    runtime: float | None = None
    task: str = "sleep"
    scheduler: str | None = None
    attempt: int = 0
    evictions: int = 0
    exit_code: int | None = None
    error: str | None = None
    wall_s: float | None = None
    cpu_s: float | None = None
    max_rss_kb: int | None = None
    errors: list[str] | None = None
    retry_in_s: float | None = None
    result: object | None = None
    traceback: str | None = None
    run_at: float | None = None
    """When a ``scheduled`` job is due (epoch seconds)."""
    # The job as a whole, on the status a watch or list reply gives (not on live events).
    args: Args | None = None
    submitted_at: float | None = None
    """When the bus accepted the job (epoch seconds)."""
    finished_at: float | None = None
    started_at: float | None = None
    """When the latest attempt started (epoch seconds)."""
    """When the job reached its final state (epoch seconds)."""
    progress: float | None = None
    """How far the running job is (0.0 to 1.0): on ``progress`` events, and on the status
    of a running job that reported some."""
    message: str | None = None
    """The message of the latest progress report (at most 1 KiB)."""
    output: str | None = None
    """On an ``output`` event the new text the job wrote; on a final event the last
    (at most 4 KiB) of the attempt's stdout and stderr."""


class Watching(msgspec.Struct, frozen=True, tag_field="type", tag="watching", omit_defaults=True):
    """The answer to :class:`Watch`: the latest event of each known job (final ones
    included) and the ids the bus does not know (never submitted, or vacuumed)."""

    jobs: list[JobEvent]
    unknown: list[str] = []
    ref: Ref = None


class JobList(msgspec.Struct, frozen=True, tag_field="type", tag="jobs", omit_defaults=True):
    """The answer to :class:`ListJobs`: the latest event of each job listed; ``more``
    when ``limit`` cut the list short."""

    jobs: list[JobEvent]
    more: bool = False
    ref: Ref = None


class Retried(msgspec.Struct, frozen=True, tag_field="type", tag="retried"):
    """The answer to :class:`Retry`: the ``retried`` event of each job that runs again,
    and why each other id was refused, by id."""

    jobs: list[JobEvent]
    errors: dict[str, str] = {}
    ref: Ref = None


BusMessage = (
    Registered
    | Accepted
    | SubmittedMany
    | CancelReply
    | Watching
    | Vacuumed
    | StatsReply
    | Error
    | Assign
    | Release
    | Stop
    | JobEvent
    | Restarting
    | JobList
    | Retried
    | Schedules
    | NotLeader
)
