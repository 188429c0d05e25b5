"""The task registry, ``@task`` declarations and loading task modules; the built-in ``sleep``."""

from __future__ import annotations

import functools
import os
import re
import sys
import textwrap
import time
from pathlib import Path

import pytest

from scheduler import tasks
from scheduler.protocol_types import MAX_NAME_LEN, MAX_RESULT_BYTES, Args
from scheduler.tasks import (
    ATTEMPT_ENV,
    JOB_ID_ENV,
    TaskLoadError,
    TaskRegistry,
    UnknownTaskError,
    call_arguments,
    load_task_modules,
    task,
)
from scheduler.worker.task_result import NOTHING, Raised, ResultPipe, TaskRecord


def double(runtime: float) -> float:
    return runtime * 2


def triple(runtime: float) -> float:
    return runtime * 3


def test_default_registry_holds_only_the_builtin_sleep() -> None:
    registry = TaskRegistry()
    assert registry.names == ["sleep"]
    assert registry.get("sleep") is tasks.sleep
    assert "sleep" in registry and "double" not in registry


def test_builtin_sleep_sleeps_for_runtime() -> None:
    start = time.monotonic()
    tasks.sleep(0.01)
    assert time.monotonic() - start >= 0.01


def test_register_adds_a_module_level_function() -> None:
    registry = TaskRegistry({})
    assert registry.names == []
    assert registry.register("double", double) is double
    assert registry.register("double", double) is double  # the same function again is fine
    assert registry.get("double")(2.0) == 4.0
    assert TaskRegistry({"b": double, "a": tasks.sleep}).names == ["a", "b"]


def test_unknown_task_error_names_the_task_and_the_known_ones() -> None:
    with pytest.raises(UnknownTaskError, match=r"unknown task 'rm -rf' \(registered: sleep\)"):
        TaskRegistry().get("rm -rf")
    with pytest.raises(UnknownTaskError, match=r"registered: none"):
        TaskRegistry({}).get("sleep")


def test_name_taken_by_another_function_is_refused() -> None:
    registry = TaskRegistry()
    with pytest.raises(ValueError, match="already registered"):
        registry.register("sleep", double)
    assert registry.get("sleep") is tasks.sleep


@pytest.mark.parametrize("name", ["", "x" * (MAX_NAME_LEN + 1)])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="task name"):
        TaskRegistry().register(name, double)


def test_functions_not_reachable_from_their_module_are_refused() -> None:
    def nested(runtime: float) -> None:
        pass

    registry = TaskRegistry()
    for function in (nested, lambda runtime: None, functools.partial(double)):
        with pytest.raises(ValueError, match="module-level function"):
            registry.register("bad", function)
    assert "bad" not in registry


def test_spec_keeps_the_defaults_and_bad_defaults_are_refused() -> None:
    registry = TaskRegistry({})
    registry.register("double", double, priority=3, timeout=5.0)
    spec = registry.spec("double")
    assert (spec.name, spec.function, spec.priority, spec.timeout) == ("double", double, 3, 5.0)
    assert TaskRegistry().spec("sleep").priority is None
    with pytest.raises(ValueError, match="priority must be 0 to 10, not 11"):
        registry.register("d2", double, priority=11)
    with pytest.raises(ValueError, match="timeout must be > 0 s, not 0"):
        registry.register("d2", double, timeout=0)


def test_task_decorator_declares_by_function_name_or_given_name() -> None:
    import sample_tasks

    registry = load_task_modules(["sample_tasks"])
    assert registry.names == sorted(registry.names)
    assert {"double", "job-probe", "sleep"} <= set(registry.names)
    assert "helper" not in registry
    assert registry.get("double") is sample_tasks.double
    probe = registry.spec("job-probe")
    assert (probe.function, probe.priority, probe.timeout) == (sample_tasks.probe, 2, 30)


def test_task_decorator_returns_the_function_unchanged_and_refuses_bad_use() -> None:
    def nested(runtime: float) -> None:
        pass

    with pytest.raises(ValueError, match="module-level function"):
        task(nested)
    with pytest.raises(ValueError, match="priority must be"):
        task(priority=-1)(double)
    with pytest.raises(ValueError, match="task name must be"):
        task(name="x" * (MAX_NAME_LEN + 1))(double)
    assert task(name="twice")(double) is double
    with pytest.raises(ValueError, match=f"'twice' is already declared in {__name__}"):
        task(name="twice")(triple)


def write(path: Path, source: str) -> str:
    path.write_text(textwrap.dedent(source))
    return str(path)


def test_task_module_can_be_loaded_by_file_path(tmp_path: Path) -> None:
    module = write(
        tmp_path / "path_tasks_ok.py",
        """
        from scheduler.tasks import task

        @task
        def shout(runtime: float) -> str:
            return "done"
        """,
    )
    registry = load_task_modules([module])
    assert registry.names == ["shout", "sleep"]
    assert registry.get("shout")(0.0) == "done"
    # Loading the same file again finds the module already imported.
    assert load_task_modules([module]).get("shout") is registry.get("shout")


def test_the_attempt_log_module_loads_by_path() -> None:
    registry = load_task_modules([str(Path(__file__).parent / "attempt_log_tasks.py")])
    assert "recorded_sleep" in registry


@pytest.mark.parametrize(
    ("name", "source", "complaint"),
    [
        ("raises_tasks", "raise RuntimeError('boom')", "cannot import it: RuntimeError: boom"),
        ("syntax_tasks", "x = (", "cannot import it: SyntaxError"),
        ("empty_tasks", "def f(runtime): pass", "no task declared"),
        (
            "wrapped_tasks",
            "from scheduler.tasks import task\n"
            "import functools\n"
            "@functools.lru_cache\n"
            "@task\n"
            "def cached(runtime): pass\n",
            "task 'cached' must be a module-level function",
        ),
    ],
)
def test_bad_task_modules_are_refused_naming_the_module(
    tmp_path: Path, name: str, source: str, complaint: str
) -> None:
    module = write(tmp_path / f"{name}.py", source)
    with pytest.raises(TaskLoadError, match=re.escape(f"task module '{module}': ") + complaint):
        load_task_modules([module])
    if "cannot import" in complaint:
        assert name not in sys.modules


def test_missing_modules_are_refused_naming_them(tmp_path: Path) -> None:
    with pytest.raises(
        TaskLoadError, match="'no_such_tasks_module': cannot import it: ModuleNotFoundError"
    ):
        load_task_modules(["no_such_tasks_module"])
    with pytest.raises(TaskLoadError, match="'nowhere/tasks.py'.*no such file"):
        load_task_modules(["nowhere/tasks.py"])


def test_a_file_named_like_another_imported_module_is_refused(tmp_path: Path) -> None:
    module = write(tmp_path / "sample_tasks.py", "")
    import sample_tasks  # noqa: F401  (the real one, imported under that name)

    with pytest.raises(TaskLoadError, match="another module named 'sample_tasks'"):
        load_task_modules([module])


def test_two_modules_declaring_the_same_name_cannot_be_loaded_together(tmp_path: Path) -> None:
    source = """
        from scheduler.tasks import task

        @task(name="double")
        def other_double(runtime: float) -> float:
            return runtime * 2
        """
    module = write(tmp_path / "clashing_tasks.py", source)
    assert load_task_modules([module]).names == ["double", "sleep"]
    with pytest.raises(TaskLoadError, match="'double' is already registered"):
        load_task_modules(["sample_tasks", module])


class TaskFailure(Exception):
    """A user-defined exception type a task raises."""


def explode(message: str) -> None:
    raise TaskFailure(message)


def add(a: float, b: float) -> float:
    return a + b


def describe(*items: object, **options: object) -> dict[str, object]:
    return {"items": list(items), "options": options}


def nothing() -> None:
    pass


@pytest.fixture(autouse=True)
def job_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let :func:`~scheduler.tasks.run_task` set the job's environment for this test only:
    set first, so that monkeypatch removes what run_task leaves when the test ends."""
    for name in (JOB_ID_ENV, ATTEMPT_ENV):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def run_in_process(function: tasks.Task, *args: object, **kwargs: object) -> TaskRecord:
    """Run ``function`` here as the job process would; collect what it left."""
    pipe = ResultPipe()
    tasks.run_task(function, args, kwargs, "job-1", 1, pipe.write_fd)
    pipe.forked()
    return pipe.collect()


def run_failing(function: tasks.Task, *args: object, **kwargs: object) -> Raised:
    """Run ``function`` here as the job process would; it must exit 1 leaving an error."""
    pipe = ResultPipe()
    with pytest.raises(SystemExit) as exited:
        tasks.run_task(function, args, kwargs, "job-1", 1, pipe.write_fd)
    assert exited.value.code == 1
    pipe.forked()
    record = pipe.collect()
    assert record.raised is not None and record.result is None
    return record.raised


def test_run_task_sets_the_job_environment() -> None:
    seen: list[tuple[str, str, float]] = []

    def record(runtime: float) -> None:
        seen.append((os.environ[JOB_ID_ENV], os.environ[ATTEMPT_ENV], runtime))

    pipe = ResultPipe()
    tasks.run_task(record, (1.5,), {}, "job-7", 3, pipe.write_fd)
    pipe.forked()
    assert pipe.collect() is NOTHING
    assert seen == [("job-7", "3", 1.5)]


@pytest.mark.parametrize(
    ("args", "runtime", "called"),
    [
        ({"a": 1, "b": [2]}, None, ((), {"a": 1, "b": [2]})),
        ({"a": 1}, 2.5, ((), {"a": 1})),
        ({}, 2.5, ((), {})),
        ([1, "x", None], None, ((1, "x", None), {})),
        ([1], 2.5, ((1,), {})),
        ([], 2.5, ((), {})),
        (None, 2.5, ((2.5,), {})),
        (None, 0.0, ((0.0,), {})),
        (None, None, ((), {})),
    ],
)
def test_call_arguments_take_args_else_the_runtime_else_nothing(
    args: Args | None, runtime: float | None, called: tuple[tuple[object, ...], dict[str, object]]
) -> None:
    assert call_arguments(args, runtime) == called


def test_run_task_calls_with_positions_and_keywords_and_leaves_the_result() -> None:
    assert run_in_process(double, 2.0) == TaskRecord(result=4.0)
    assert run_in_process(add, 2, b=3.5) == TaskRecord(result=5.5)
    described = run_in_process(describe, 1, "two", flag=True)
    assert described == TaskRecord(result={"items": [1, "two"], "options": {"flag": True}})


def test_run_task_leaves_nothing_when_the_task_returns_none() -> None:
    assert run_in_process(nothing) is NOTHING


def test_run_task_exits_1_leaving_the_exception_the_task_raised() -> None:
    raised = run_failing(explode, "out of disk")
    assert (raised.type, raised.message) == (f"{__name__}.TaskFailure", "out of disk")
    assert raised.error == f"{__name__}.TaskFailure: out of disk"
    assert raised.traceback.startswith("Traceback (most recent call last):\n")
    assert "in explode\n" in raised.traceback
    assert raised.traceback.endswith(f"{__name__}.TaskFailure: out of disk\n")


def test_a_task_called_with_the_wrong_arguments_fails_like_any_exception() -> None:
    raised = run_failing(add, 1, c=2)
    assert raised.type == "TypeError"
    assert "unexpected keyword argument 'c'" in raised.message


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (object(), "the task's result is not JSON: "),
        (
            "x" * MAX_RESULT_BYTES,
            f"the task's result is {MAX_RESULT_BYTES + 2} bytes of JSON;"
            f" the limit is {MAX_RESULT_BYTES}",
        ),
    ],
)
def test_a_result_that_is_not_json_or_too_large_exits_1_with_a_result_error(
    value: object, message: str
) -> None:
    raised = run_failing(lambda: value)
    assert (raised.type, raised.traceback) == ("ResultError", "")
    assert raised.message.startswith(message), raised.message


def test_the_registry_lists_the_default_priorities_declared() -> None:
    registry = TaskRegistry()
    registry.register("double", double, priority=2, timeout=5)
    assert registry.priorities() == {"double": 2}
    assert registry.spec("double").timeout == 5 and registry.spec("sleep").timeout is None


def test_task_decorator_declares_a_schedule_named_after_the_task(tmp_path: Path) -> None:
    module = write(
        tmp_path / "path_tasks_periodic.py",
        """
        from scheduler.tasks import task

        @task(every=30, priority=2, jitter=1.5, max_instances=2)
        def poll() -> None:
            pass

        @task(name="nightly", cron="0 3 * * *", tz="Europe/Berlin", coalesce=False)
        def night() -> None:
            pass

        @task
        def plain() -> None:
            pass
        """,
    )
    registry = load_task_modules([module])
    nightly, poll = registry.schedules()
    assert (poll.name, poll.task, poll.every, poll.priority) == ("poll", "poll", 30, 2)
    assert (poll.jitter, poll.max_instances, poll.coalesce) == (1.5, 2, True)
    assert (nightly.cron, nightly.tz, nightly.coalesce) == ("0 3 * * *", "Europe/Berlin", False)
    assert registry.spec("plain").schedule is None


def test_a_bad_schedule_is_refused_naming_the_task_and_the_field() -> None:
    with pytest.raises(ValueError, match="task 'double': every: give exactly one"):
        task(every=5, cron="* * * * *")(double)
    with pytest.raises(ValueError, match="task 'double': cron: not a valid"):
        task(cron="nope")(double)
    with pytest.raises(ValueError, match=r"task 'double': schedule: .*\$\.every"):
        task(every=-1)(double)
    with pytest.raises(ValueError, match=r"task 'double': schedule: .*max_instances"):
        task(every=1, max_instances=0)(double)
