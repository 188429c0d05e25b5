"""The tasks a scheduler may run, by name. A job can only name a registered task, never code.

A task is a module-level function called in the job process as ``task(runtime)``, with the
job's ``runtime`` (the only argument the wire protocol carries). It succeeds by returning,
fails by raising or exiting with a non-zero status.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping

from scheduler.protocol import MAX_NAME_LEN

Task = Callable[[float], object]


def sleep(runtime: float) -> None:
    """The built-in test workload: sleep ``runtime`` seconds."""
    time.sleep(runtime)


BUILTIN_TASKS: Mapping[str, Task] = {"sleep": sleep}


class UnknownTaskError(LookupError):
    """A job named a task this scheduler has not registered."""


class TaskRegistry:
    """Task names mapped to module-level functions; starts with the built-in ``sleep``."""

    def __init__(self, tasks: Mapping[str, Task] = BUILTIN_TASKS) -> None:
        """Register ``tasks`` (by default the built-ins only)."""
        self._tasks: dict[str, Task] = {}
        for name, task in tasks.items():
            self.register(name, task)

    def register(self, name: str, task: Task) -> Task:
        """Add ``task`` under ``name`` and return it.

        Raises ``ValueError`` for an empty or too long name, a name already taken by
        another function, or a function that is not reachable as a module attribute
        (a lambda, a nested function): only those could run under any start method.
        """
        if not 1 <= len(name) <= MAX_NAME_LEN:
            raise ValueError(f"task name must be 1 to {MAX_NAME_LEN} characters: {name!r}")
        if self._tasks.get(name, task) is not task:
            raise ValueError(f"task {name!r} is already registered")
        module = sys.modules.get(getattr(task, "__module__", ""))
        found: object = getattr(module, getattr(task, "__qualname__", ""), None)
        if found is not task:
            raise ValueError(f"task {name!r} must be a module-level function, not {task!r}")
        self._tasks[name] = task
        return task

    def get(self, name: str) -> Task:
        """The function registered under ``name``; raises :class:`UnknownTaskError`."""
        try:
            return self._tasks[name]
        except KeyError:
            known = ", ".join(self.names) or "none"
            raise UnknownTaskError(f"unknown task {name!r} (registered: {known})") from None

    @property
    def names(self) -> list[str]:
        """The registered names, sorted (what a scheduler announces to the bus)."""
        return sorted(self._tasks)

    def __contains__(self, name: object) -> bool:
        """Whether a task is registered under ``name``."""
        return name in self._tasks
