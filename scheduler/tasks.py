"""The tasks a scheduler may run, by name. A job can only name a registered task, never code.

A task is a module-level function run in the job's own process. It is called with the
job's ``args``: a JSON object as keyword arguments, a JSON array as positional arguments.
A job without ``args`` calls it with its ``runtime`` if it has one (``task(runtime)``:
how the built-in ``sleep`` and every v1 job run), else with no arguments.

What the task returns is the job's result: it must encode as JSON (msgspec's JSON: also
dataclasses, datetimes, UUIDs, sets) in at most 64 KiB, and arrives in the job's
``succeeded`` event. An exception the task raises fails the job: the ``failed`` event's
``error`` reads ``Type: message`` and its ``traceback`` holds the formatted traceback.
A result that is not JSON or too large fails the job the same way (type ``ResultError``).
A task that exits with a non-zero status (``sys.exit(3)``) or is killed fails with that
status as its error.

Your own tasks are module-level functions marked with :func:`task`::

    from scheduler.tasks import task

    @task                                   # registered as "resize"
    def resize(path: str, width: int) -> dict[str, int]: ...

    @task(name="report", priority=2, timeout=60, memory="512M", cpu=30)
    def build_report(day: str) -> None: ...

and served with ``python -m scheduler.worker --tasks mypkg.jobs`` (a dotted module name,
or a path such as ``jobs/nightly.py``; several separated by commas). The scheduler
registers exactly those task names (and ``sleep``) with the bus and runs nothing else.
``priority`` and ``timeout`` are the defaults of the task's jobs: a job submitted without
a priority gets the task's (the scheduler declares it when it registers; the bus falls
back to 5), a job without a timeout the task's (else the scheduler's ``-t``, else none). ``memory``
(bytes, or a size such as ``"512M"`` or ``"2G"``) and ``cpu`` (seconds) limit the job's
whole process tree: its resident memory and its CPU time, summed over the job process and
every descendant; past either, the job is stopped and reported ``failed`` with the reason
(``memory limit 512 MB exceeded: 530 MB``). Each is the task's, else the scheduler's
(``--memory-limit``, ``--cpu-limit``), else none.

A producer submits a task's job from the function itself: ``resize.submit("a.png", 640,
priority=1)`` (blocking, through :class:`~scheduler.producer.sync.SyncClient`) or
``await resize.submit_async(...)``; both bind the arguments against the function's
signature first and raise ``TypeError`` naming a missing or unexpected one before anything
is sent (see :mod:`scheduler.producer.typed`). The producer library is imported only then:
importing this module never loads the network stack.

In the job process the task can tell which job it runs: the environment variables
``SCHEDBUS_JOB_ID`` (the job's id) and ``SCHEDBUS_ATTEMPT`` (the attempt number, counting
from 1; a job that is evicted, retried or reassigned runs again under a higher one) are
set before the task is called. Processes it starts belong to the job, even those that
start a new session or daemonize: they are killed when it ends, fails, times out, is
evicted, cancelled or stopped at a limit. A task must not count on a process it started
outliving it.

A task may report how far it is with :func:`progress` (``progress(0.4, "copying")``);
each becomes a ``progress`` event (at most two a second per job, the last one always).
What it writes to stdout and stderr goes to the job's log file on its scheduler
(``python -m scheduler.worker --log-dir``), is sent along as ``output`` events while it
runs, and its last 4 KiB come with the job's final event.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, ParamSpec, Protocol, TypeVar, cast, overload

import msgspec

from scheduler.policy.limits import NO_LIMITS, Limits, parse_size
from scheduler.protocol_types import MAX_NAME_LEN, MAX_TIMEOUT_S, PRIORITY_MAX, PRIORITY_MIN, Args
from scheduler.worker.held import wait_for_go
from scheduler.worker.job_progress import enter_job
from scheduler.worker.job_progress import progress as progress  # public: tasks call it
from scheduler.worker.task_result import imported_since, send_exception, send_result

if TYPE_CHECKING:
    from scheduler.producer.handle import Job
    from scheduler.producer.sync import SyncJob
    from scheduler.protocol_schedules import ScheduleSpec

Task = Callable[..., object]
P = ParamSpec("P")
R_co = TypeVar("R_co", covariant=True)

JOB_ID_ENV: Final = "SCHEDBUS_JOB_ID"
"""Environment variable holding the job's id in its process."""
ATTEMPT_ENV: Final = "SCHEDBUS_ATTEMPT"
"""Environment variable holding the attempt number (1, 2, ...) in the job's process."""


def sleep(runtime: float) -> None:
    """The built-in test workload: sleep ``runtime`` seconds."""
    time.sleep(runtime)


BUILTIN_TASKS: Mapping[str, Task] = {"sleep": sleep}


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A task under its name, with its default ``priority`` and ``timeout`` and the
    ``limits`` of its jobs' process trees (None or no limit: unset).

    Raises ``ValueError`` for a name of the wrong length or a default the wire protocol
    would refuse.
    """

    name: str
    function: Task
    priority: int | None = None
    timeout: float | None = None
    limits: Limits = NO_LIMITS
    schedule: ScheduleSpec | None = None
    """The periodic job the task declares (``@task(every=...)`` or ``cron=``), if any."""

    def __post_init__(self) -> None:
        if not 1 <= len(self.name) <= MAX_NAME_LEN:
            raise ValueError(f"task name must be 1 to {MAX_NAME_LEN} characters: {self.name!r}")
        if self.priority is not None and not PRIORITY_MIN <= self.priority <= PRIORITY_MAX:
            raise ValueError(
                f"task {self.name!r}: priority must be {PRIORITY_MIN} to {PRIORITY_MAX}, "
                f"not {self.priority}"
            )
        if self.timeout is not None and not 0 < self.timeout <= MAX_TIMEOUT_S:
            raise ValueError(f"task {self.name!r}: timeout must be > 0 s, not {self.timeout}")


class UnknownTaskError(LookupError):
    """A job named a task this scheduler has not registered."""


class TaskLoadError(Exception):
    """A task module could not be used: it does not import, or it declares no task."""


class TaskRegistry:
    """Task names mapped to module-level functions; starts with the built-in ``sleep``."""

    def __init__(self, tasks: Mapping[str, Task] = BUILTIN_TASKS) -> None:
        """Register ``tasks`` (by default the built-ins only)."""
        self._specs: dict[str, TaskSpec] = {}
        for name, function in tasks.items():
            self.register(name, function)

    def register(
        self,
        name: str,
        task: Task,
        *,
        priority: int | None = None,
        timeout: float | None = None,
        limits: Limits = NO_LIMITS,
        schedule: ScheduleSpec | None = None,
    ) -> Task:
        """Add ``task`` under ``name`` with its defaults, limits and ``schedule``, and
        return it.

        Raises ``ValueError`` for an empty or too long name, a bad default, a name already
        taken by another function, or a function that is not reachable as a module
        attribute (a lambda, a nested or re-wrapped function): only those could run under
        any start method.
        """
        spec = TaskSpec(name, task, priority, timeout, limits, schedule)
        if self._specs.get(name, spec).function is not task:
            raise ValueError(f"task {name!r} is already registered")
        module = sys.modules.get(getattr(task, "__module__", ""))
        found: object = getattr(module, getattr(task, "__qualname__", ""), None)
        if found is not task:
            raise ValueError(f"task {name!r} must be a module-level function, not {task!r}")
        self._specs[name] = spec
        return task

    def get(self, name: str) -> Task:
        """The function registered under ``name``; raises :class:`UnknownTaskError`."""
        return self.spec(name).function

    def spec(self, name: str) -> TaskSpec:
        """The task registered under ``name`` with its defaults; raises
        :class:`UnknownTaskError`."""
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(self.names) or "none"
            raise UnknownTaskError(f"unknown task {name!r} (registered: {known})") from None

    @property
    def names(self) -> list[str]:
        """The registered names, sorted (what a scheduler announces to the bus)."""
        return sorted(self._specs)

    def priorities(self) -> dict[str, int]:
        """The default priority of each task that declares one, by name."""
        return {
            name: spec.priority for name, spec in self._specs.items() if spec.priority is not None
        }

    def schedules(self) -> list[ScheduleSpec]:
        """The schedules the registered tasks declare (what a scheduler sends the bus)."""
        return [spec.schedule for _, spec in sorted(self._specs.items()) if spec.schedule]

    def __contains__(self, name: object) -> bool:
        """Whether a task is registered under ``name``."""
        return name in self._specs


_declared: dict[str, dict[str, TaskSpec]] = {}
"""The default registry: every :func:`task` declaration, by module, then task name.

Kept per module so that two task modules may use the same name as long as no scheduler
loads both; :func:`load_task_modules` builds a scheduler's registry from it."""


class TaskFunction(Protocol[P, R_co]):
    """What :func:`task` returns: the function itself, called as before, which also
    submits its own jobs (see :mod:`scheduler.producer.typed` for the keywords)."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Call the function here, in this process."""
        ...

    def submit(self, *args: Any, **kwargs: Any) -> SyncJob:
        """Submit a job of this task with these arguments; return its handle."""
        ...

    async def submit_async(self, *args: Any, **kwargs: Any) -> Job:
        """Submit a job of this task with these arguments; return its handle."""
        ...


def _submitters(name: str, function: Task) -> dict[str, object]:
    """The ``submit`` and ``submit_async`` methods :func:`task` gives a function."""

    def submit(*args: Any, **kwargs: Any) -> SyncJob:
        from scheduler.producer import typed  # the network stack, loaded only when used

        return typed.submit(name, function, args, kwargs)

    async def submit_async(*args: Any, **kwargs: Any) -> Job:
        from scheduler.producer import typed

        return await typed.submit_async(name, function, args, kwargs)

    submit.__doc__ = f"Submit a job of task {name!r}; return its handle (a SyncJob)."
    submit_async.__doc__ = f"Submit a job of task {name!r}; return its handle (a Job)."
    return {"submit": submit, "submit_async": submit_async}


@overload
def task(function: Callable[P, R_co], /) -> TaskFunction[P, R_co]: ...


@overload
def task(
    *,
    name: str | None = None,
    priority: int | None = None,
    timeout: float | None = None,
    memory: str | int | None = None,
    cpu: float | None = None,
    every: float | None = None,
    cron: str | None = None,
    tz: str = "UTC",
    **schedule: object,
) -> Callable[[Callable[P, R_co]], TaskFunction[P, R_co]]: ...


def task(
    function: Callable[P, R_co] | None = None,
    /,
    *,
    name: str | None = None,
    priority: int | None = None,
    timeout: float | None = None,
    memory: str | int | None = None,
    cpu: float | None = None,
    every: float | None = None,
    cron: str | None = None,
    tz: str = "UTC",
    **schedule: object,
) -> TaskFunction[P, R_co] | Callable[[Callable[P, R_co]], TaskFunction[P, R_co]]:
    """Declare a module-level function as a task, as ``@task`` or ``@task(name=...)``.

    Records it in the default registry under ``name`` (default: the function's name) for
    :func:`load_task_modules`, with its default ``priority`` and ``timeout`` and the
    ``memory`` (bytes, or a size such as ``"512M"``) and ``cpu`` (seconds) limits of its
    jobs' process trees, and returns the function itself, given ``submit`` and
    ``submit_async`` methods (:class:`TaskFunction`). Raises ``ValueError`` for a
    nested function, a bad name, default or limit, or a name the same module already gave
    another function.

    ``every`` (seconds) or ``cron`` (an expression, in time zone ``tz``) makes it periodic:
    a schedule named after the task, which every scheduler serving the task declares to
    the bus when it registers (the bus keeps one per name). The other keywords
    (``args``, ``misfire_grace``, ``jitter``, ``max_instances``, ``coalesce``) are the
    schedule's, as :class:`~scheduler.protocol_schedules.ScheduleSpec` describes them; a bad one
    raises ``ValueError`` naming the field.
    """

    def declare(function: Callable[P, R_co]) -> TaskFunction[P, R_co]:
        qualname: str = getattr(function, "__qualname__", "")
        if "<locals>" in qualname or "<lambda>" in qualname:
            raise ValueError(f"@task needs a module-level function, not {qualname!r}")
        limits = _limits(name or qualname, memory, cpu)
        periodic = None
        if every is not None or cron is not None or schedule:
            fields = {"every": every, "cron": cron, "tz": tz, **schedule}
            periodic = _schedule(name or qualname, priority, timeout, fields)
        spec = TaskSpec(name or qualname, function, priority, timeout, limits, periodic)
        declared = _declared.setdefault(function.__module__, {})
        old = declared.get(spec.name)
        if old is not None and getattr(old.function, "__qualname__", "") != qualname:
            raise ValueError(f"task {spec.name!r} is already declared in {function.__module__}")
        # Re-executing a module (reload) declares its tasks again: the newest wins.
        declared[spec.name] = spec
        vars(function).update(_submitters(spec.name, function))
        return cast(TaskFunction[P, R_co], function)

    return declare if function is None else declare(function)


def _schedule(
    name: str, priority: int | None, timeout: float | None, fields: dict[str, object]
) -> ScheduleSpec:
    """The schedule ``@task`` declared for task ``name``; ``ValueError`` naming the field."""
    # Here, not at the top: the fork server imports this module, and every page its
    # imports fill is one more for each fork to copy (croniter, the wire's structs).
    from scheduler.policy.schedules import spec_problem
    from scheduler.protocol_schedules import ScheduleSpec

    given = {key: value for key, value in fields.items() if value is not None}
    try:
        spec = msgspec.convert(
            {"name": name, "task": name, "priority": priority, "timeout": timeout} | given,
            ScheduleSpec,
        )
    except msgspec.ValidationError as exc:
        raise ValueError(f"task {name!r}: schedule: {exc}") from None
    problem = spec_problem(spec)
    if problem is not None:
        raise ValueError(f"task {name!r}: {problem[1]}")
    return spec


def _limits(name: str, memory: str | int | None, cpu: float | None) -> Limits:
    """The limits ``@task`` was given; ``ValueError`` naming the task and the field."""
    try:
        return Limits(None if memory is None else parse_size(memory), cpu)
    except ValueError as exc:
        raise ValueError(f"task {name!r}: {exc}") from None


def load_task_modules(modules: Iterable[str]) -> TaskRegistry:
    """Import task modules and return a registry of their :func:`task` s plus ``sleep``.

    Each entry is a dotted module name (``mypkg.jobs``) or a path to a ``.py`` file
    (imported under its file name). Raises :class:`TaskLoadError` naming the module if it
    does not import, declares no task, or declares a name another loaded module has.
    """
    registry = TaskRegistry()
    for entry in modules:
        module = _import(entry)
        specs = _declared.get(module.__name__, {}).values()
        if not specs:
            raise TaskLoadError(
                f"task module {entry!r}: no task declared (mark functions with @task)"
            )
        for spec in specs:
            try:
                registry.register(
                    spec.name,
                    spec.function,
                    priority=spec.priority,
                    timeout=spec.timeout,
                    limits=spec.limits,
                    schedule=spec.schedule,
                )
            except ValueError as exc:
                raise TaskLoadError(f"task module {entry!r}: {exc}") from None
    return registry


def _import(entry: str) -> ModuleType:
    """Import ``entry`` by dotted name or by file path; wrap any failure in TaskLoadError."""
    try:
        if entry.endswith(".py") or os.sep in entry:
            return _import_file(Path(entry))
        return importlib.import_module(entry)
    except TaskLoadError:
        raise
    except Exception as exc:
        where = _where_raised(exc)
        raise TaskLoadError(
            f"task module {entry!r}: cannot import it: {type(exc).__name__}: {exc}"
            + (f"\n{where}" if where else "")
        ) from exc


_OWN_FRAMES: Final = (__file__, importlib.__file__ or "", "<frozen importlib")


def _where_raised(exc: BaseException, frames: int = 3) -> str:
    """Where ``exc`` was raised, as a traceback shows it: the last ``frames`` frames
    outside the import machinery and this module (file, line, function and the source
    line), and for a syntax error the offending line. Empty if none is left."""
    lines: list[str] = []
    trace = traceback.extract_tb(exc.__traceback__)
    for frame in [f for f in trace if not f.filename.startswith(_OWN_FRAMES)][-frames:]:
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
        if frame.line:
            lines.append(f"    {frame.line.strip()}")
    if isinstance(exc, SyntaxError) and exc.filename:
        lines.append(f'  File "{exc.filename}", line {exc.lineno}')
        if exc.text:
            lines.append(f"    {exc.text.strip()}")
    return "\n".join(lines)


def _import_file(path: Path) -> ModuleType:
    """Import the file at ``path`` as a top-level module named after the file."""
    path = path.resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None:
        if Path(getattr(existing, "__file__", None) or "").resolve() == path:
            return existing
        raise ImportError(f"another module named {name!r} is already imported")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a .py file always has a loader
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as import does: its tasks must be reachable by module name.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def call_arguments(
    args: Args | None, runtime: float | None, results: dict[str, object] | None = None
) -> tuple[tuple[object, ...], dict[str, object]]:
    """The positional and keyword arguments a job's task is called with (see the module
    docstring): ``args`` as keywords or positions, else ``(runtime,)``, else nothing;
    plus ``results=`` (the dependencies' results) when the job asked for them."""
    extra: dict[str, object] = {} if results is None else {"results": results}
    if isinstance(args, dict):
        return (), {**args, **extra}
    if args is not None:
        return tuple(args), extra
    return ((runtime,) if runtime is not None else ()), extra


def run_task(
    task: Task,
    args: tuple[object, ...],
    kwargs: dict[str, object],
    job_id: str,
    attempt: int,
    result_fd: int,
    progress_fd: int = -1,
    log_path: str | None = None,
    go_fd: int = -1,
) -> None:
    """The job process's entry point: for a held job (``go_fd``), wait for its release
    first, and exit at once with status 1 if the scheduler closes the pipe instead
    (:func:`~scheduler.worker.held.wait_for_go`); send :func:`progress` to
    ``progress_fd``, point stdout and stderr at the log spool at ``log_path`` (if
    given), publish the job's id and attempt in the environment (see the module
    docstring), call ``task(*args, **kwargs)`` and write its result or exception to
    ``result_fd`` with the modules it imported (for
    :class:`~scheduler.worker.job_imports.ImportNotices`); exit with status 1 if it raised."""
    if go_fd >= 0 and not wait_for_go(go_fd):
        raise SystemExit(1)
    enter_job(progress_fd, log_path)
    os.environ[JOB_ID_ENV] = job_id
    os.environ[ATTEMPT_ENV] = str(attempt)
    loaded = len(sys.modules)
    try:
        value = task(*args, **kwargs)
    except Exception as exc:
        # The traceback starts in the task: this frame is ours, not the user's.
        trace = exc.__traceback__
        raised = exc.with_traceback(trace.tb_next if trace else None)
        send_exception(result_fd, raised, imported_since(loaded))
        raise SystemExit(1) from None
    if not send_result(result_fd, value, imported_since(loaded)):
        raise SystemExit(1)
