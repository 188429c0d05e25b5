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
from scheduler.protocol import MAX_NAME_LEN
from scheduler.tasks import (
    ATTEMPT_ENV,
    JOB_ID_ENV,
    TaskLoadError,
    TaskRegistry,
    UnknownTaskError,
    load_task_modules,
    task,
)


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
    assert registry.names == ["double", "job-probe", "sleep"]
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


def test_run_task_sets_the_job_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(JOB_ID_ENV, raising=False)
    monkeypatch.delenv(ATTEMPT_ENV, raising=False)
    seen: list[tuple[str, str, float]] = []

    def record(runtime: float) -> None:
        seen.append((os.environ[JOB_ID_ENV], os.environ[ATTEMPT_ENV], runtime))

    tasks.run_task(record, 1.5, "job-7", 3)
    assert seen == [("job-7", "3", 1.5)]
