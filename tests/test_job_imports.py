"""A task that imports modules inside its job process is named once in the scheduler's
log, with the fix; the imports are reported by real job processes of a real fork server,
and warm slots (which import once per slot) are never named."""

from __future__ import annotations

import logging

import forkserver_tasks
import pytest
import sample_tasks
from conftest import unit
from test_executor import Reports, job

from scheduler.policy.warm import WarmLimits
from scheduler.tasks import TaskRegistry
from scheduler.worker.executor import Executor
from scheduler.worker.forkserver_launcher import ForkServerLauncher
from scheduler.worker.job_imports import SHOWN_NAMES, ImportNotices, entry_points
from scheduler.worker.launch import Launcher
from scheduler.worker.warm import WarmPool

pytestmark = pytest.mark.timeout(60)

REGISTRY = TaskRegistry({"lazy_import": forkserver_tasks.lazy_import, "add": sample_tasks.add})
LOGGER = "scheduler.worker.job_imports"


def notices(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_a_task_is_named_once_with_the_modules_and_the_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    told = ImportNotices(every_job=True)
    many = [f"m{n}" for n in range(SHOWN_NAMES + 3)]
    assert told.seen("a", many)
    assert not told.seen("a", ["other"])
    assert not told.seen("b", [])
    assert told.seen("b", ["colorsys"])
    first, second = notices(caplog)
    assert "task a imports modules in its job process (m0, m1" in first
    assert f"m{SHOWN_NAMES - 1} and 3 more)" in first and f"m{SHOWN_NAMES}," not in first
    assert "import them at the top of the task's module" in first
    assert "(colorsys)" in second


def test_the_modules_named_are_the_entry_points_submodules_of_loaded_packages_first() -> None:
    imported = ["zlib", "numpy.random._common", "numpy.random", "hashlib", "numpy.random.mtrand"]
    assert entry_points(imported) == ["numpy.random", "zlib", "hashlib"]
    assert entry_points(["pkg", "pkg.sub"]) == ["pkg"]


def test_warm_slots_are_never_named(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    assert not ImportNotices(every_job=False).seen("a", ["colorsys"])
    assert notices(caplog) == []


async def run_jobs(launcher: Launcher, task: str, args: list[object], count: int) -> None:
    reports = Reports()
    executor = Executor(1, 10 * unit(), REGISTRY, reports, launcher=launcher)
    try:
        for n in range(count):
            executor.submit(job(f"{task}{n}", task=task, args=args))
            await reports.expect("succeeded", f"{task}{n}")
    finally:
        await executor.shutdown()  # which closes the fork server or the warm slots


async def test_jobs_of_the_fork_server_report_what_their_task_imported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    await run_jobs(ForkServerLauncher(REGISTRY), "lazy_import", [], 2)
    (notice,) = notices(caplog)
    assert "task lazy_import imports modules in its job process (colorsys)" in notice


async def test_a_task_that_imports_nothing_is_not_named(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    await run_jobs(ForkServerLauncher(REGISTRY), "add", [1, 2], 2)
    assert notices(caplog) == []


async def test_warm_mode_names_no_task(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    await run_jobs(WarmPool(WarmLimits(10)), "lazy_import", [], 2)
    assert notices(caplog) == []
