"""The task registry: what a scheduler may run, and the built-in ``sleep``."""

from __future__ import annotations

import functools
import time

import pytest

from scheduler import tasks
from scheduler.protocol import MAX_NAME_LEN
from scheduler.tasks import TaskRegistry, UnknownTaskError


def double(runtime: float) -> float:
    return runtime * 2


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
    for task in (nested, lambda runtime: None, functools.partial(double)):
        with pytest.raises(ValueError, match="module-level function"):
            registry.register("bad", task)
    assert "bad" not in registry
