"""The executor against real child processes: starts, ends, timeouts, eviction, stops,
shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psutil
import pytest
import sample_tasks
from conftest import unit, wait_until

from scheduler.policy.warm import WarmLimits
from scheduler.protocol import Assignment, Held, Report
from scheduler.protocol_types import MAX_RESULT_BYTES
from scheduler.tasks import Task, TaskRegistry
from scheduler.worker import executor as executor_module
from scheduler.worker import job_run
from scheduler.worker.executor import Executor
from scheduler.worker.process import JobProcess
from scheduler.worker.warm import WarmPool

PIDFILE = "SCHEDBUS_TEST_PIDFILE"
TERMFILE = "SCHEDBUS_TEST_TERMFILE"


def fail(runtime: float) -> None:
    raise RuntimeError("this task always fails")


def exit3(runtime: float) -> None:
    sys.exit(3)


def kill_self(runtime: float) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def with_grandchild(runtime: float) -> None:
    """Spawn a long-lived grandchild, publish its pid, then sleep ``runtime``."""
    grandchild = subprocess.Popen(["sleep", "600"])
    path = Path(os.environ[PIDFILE])
    path.with_suffix(".tmp").write_text(str(grandchild.pid))
    path.with_suffix(".tmp").rename(path)
    time.sleep(runtime)


def stubborn(runtime: float) -> None:
    """Note SIGTERM in a file and keep running, so only SIGKILL ends it."""

    def noted(signum: int, frame: object) -> None:
        Path(os.environ[TERMFILE]).touch()

    signal.signal(signal.SIGTERM, noted)
    time.sleep(runtime)


TEST_TASKS: dict[str, Task] = {
    "sleep": TaskRegistry().get("sleep"),
    "job-probe": sample_tasks.probe,
    "fail": fail,
    "exit3": exit3,
    "kill_self": kill_self,
    "with_grandchild": with_grandchild,
    "stubborn": stubborn,
    "add": sample_tasks.add,
    "describe": sample_tasks.describe,
    "explode": sample_tasks.explode,
    "too_big": sample_tasks.too_big,
    "spawn_grandchildren": sample_tasks.spawn_grandchildren,
}


class Reports:
    """Collects the executor's reports and lets a test wait for the one it expects."""

    def __init__(self) -> None:
        self.seen: list[Report] = []
        self._changed = asyncio.Event()

    def __call__(self, report: Report, assignment: Assignment) -> None:
        assert (report.id, report.attempt) == (assignment.id, assignment.attempt)
        self.seen.append(report)
        self._changed.set()

    async def expect(self, event: str, job_id: str, nth: int = 1, timeout: float = 5.0) -> Report:
        """Wait until ``event`` about ``job_id`` was reported ``nth`` times; return that one."""
        async with asyncio.timeout(timeout * unit()):
            while True:
                found = [r for r in self.seen if (r.event, r.id) == (event, job_id)]
                if len(found) >= nth:
                    return found[nth - 1]
                self._changed.clear()
                await self._changed.wait()

    def of(self, job_id: str) -> list[tuple[str, int]]:
        """The (event, attempt) pairs seen so far about ``job_id``."""
        return [(r.event, r.attempt) for r in self.seen if r.id == job_id]


def job(
    job_id: str,
    priority: int = 5,
    runtime: float = 0.05,
    task: str = "sleep",
    timeout: float | None = None,
    attempt: int = 1,
    evictions: int = 0,
    evictable: bool = True,
    args: dict[str, object] | list[object] | None = None,
) -> Assignment:
    """An assignment; ``runtime`` and ``timeout`` are in test units."""
    return Assignment(
        id=job_id,
        attempt=attempt,
        priority=priority,
        runtime=runtime * unit(),
        task=task,
        args=args,
        timeout=None if timeout is None else timeout * unit(),
        evictions=evictions,
        evictable=evictable,
    )


ExecutorFactory = Callable[..., Executor]


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def launcher() -> str:
    """How the executor runs jobs: ``process`` (a fork per job) unless a test is
    parametrized with ``BOTH_LAUNCHERS`` to run in ``warm`` mode too."""
    return "process"


BOTH_LAUNCHERS = pytest.mark.parametrize("launcher", ["process", "warm"])
"""Runs a test of a key guarantee with a fork per job and in warm mode."""


@pytest.fixture
async def make_executor(reports: Reports, launcher: str) -> AsyncIterator[ExecutorFactory]:
    """Builds executors reporting to ``reports``, running jobs as ``launcher`` says; every
    one is shut down at the end."""
    made: list[Executor] = []

    def make(
        size: int = 2,
        default_timeout: float = 10.0,
        grace: float = 2.0,
        may_start: Callable[[], bool] = lambda: True,
    ) -> Executor:
        warm = WarmPool(WarmLimits(3)) if launcher == "warm" else None
        executor = Executor(
            size,
            default_timeout * unit(),
            TaskRegistry(TEST_TASKS),
            reports,
            grace=grace,
            may_start=may_start,
            launcher=warm,
        )
        made.append(executor)
        return executor

    yield make
    for executor in made:
        await executor.shutdown()


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def children() -> list[psutil.Process]:
    """The live processes below this test process."""
    return [p for p in psutil.Process().children(recursive=True) if alive(p.pid)]


@BOTH_LAUNCHERS
async def test_job_starts_and_succeeds_with_its_measurements(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    executor = make_executor()
    executor.submit(job("a", runtime=0.05, attempt=3))
    assert reports.seen == [Report("started", "a", 3)]
    assert (executor.running, executor.queued) == (1, 0)
    done = await reports.expect("succeeded", "a")
    assert done.attempt == 3 and done.exit_code == 0 and done.error is None
    assert done.wall_s is not None and done.wall_s >= 0.05 * unit()
    assert done.cpu_s is not None and done.cpu_s >= 0
    assert done.max_rss_kb is not None and done.max_rss_kb > 0
    assert executor.running == 0 and executor.pid_of("a") is None


@BOTH_LAUNCHERS
@pytest.mark.parametrize(
    ("task", "exit_code", "error"),
    [
        ("fail", 1, "RuntimeError: this task always fails"),
        ("exit3", 3, "exit code 3"),
        ("kill_self", -9, "killed by signal 9 (SIGKILL)"),
    ],
)
async def test_failing_job_is_reported_failed(
    make_executor: ExecutorFactory, reports: Reports, task: str, exit_code: int, error: str
) -> None:
    make_executor().submit(job("f", task=task))
    failed = await reports.expect("failed", "f")
    assert (failed.exit_code, failed.error) == (exit_code, error)


@pytest.mark.parametrize(
    ("args", "result"),
    [
        ({"a": 2, "b": 3.5}, 5.5),
        ([2, 3], 5),
        (None, None),
    ],
)
async def test_a_task_gets_its_arguments_and_its_result_is_reported(
    make_executor: ExecutorFactory,
    reports: Reports,
    args: dict[str, object] | list[object] | None,
    result: object,
) -> None:
    task = "add" if args is not None else "sleep"
    make_executor().submit(job("r", task=task, args=args))
    done = await reports.expect("succeeded", "r")
    assert (done.result, done.error, done.traceback) == (result, None, None)


async def test_json_arguments_and_results_keep_their_shape(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    args: dict[str, object] = {"unicode": "ünï ✓", "nested": {"list": [1, 2.5, None, True]}}
    make_executor().submit(job("d", task="describe", args=args))
    done = await reports.expect("succeeded", "d")
    assert done.result == {"items": [], "options": args}


@BOTH_LAUNCHERS
async def test_an_exception_fails_the_job_with_its_type_message_and_traceback(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    make_executor().submit(job("x", task="explode", args={"message": "disk on fire"}))
    failed = await reports.expect("failed", "x")
    assert failed.exit_code == 1 and failed.result is None
    assert failed.error == "sample_tasks.TaskFailure: disk on fire"
    assert failed.traceback is not None
    assert failed.traceback.startswith("Traceback (most recent call last):")
    assert "in explode" in failed.traceback and "raise TaskFailure(message)" in failed.traceback
    assert failed.traceback.rstrip().endswith("sample_tasks.TaskFailure: disk on fire")


async def test_arguments_the_task_does_not_take_fail_the_job_saying_so(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    make_executor().submit(job("t", task="add", args={"a": 1}))
    failed = await reports.expect("failed", "t")
    assert failed.error is not None and failed.error.startswith("TypeError: ")
    assert "missing 1 required positional argument: 'b'" in failed.error


async def test_a_result_over_the_limit_fails_the_job_and_never_blocks_it(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    make_executor().submit(job("big", task="too_big", args=[MAX_RESULT_BYTES - 2]))
    make_executor().submit(job("huge", task="too_big", args=[MAX_RESULT_BYTES]))
    fits = await reports.expect("succeeded", "big")
    assert fits.result == "x" * (MAX_RESULT_BYTES - 2)
    failed = await reports.expect("failed", "huge")
    assert failed.error == (
        f"ResultError: the task's result is {MAX_RESULT_BYTES + 2} bytes of JSON; "
        f"the limit is {MAX_RESULT_BYTES}"
    )


@BOTH_LAUNCHERS
async def test_a_result_is_collected_though_grandchildren_hold_its_pipe_and_they_are_stopped(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    make_executor().submit(job("g", task="spawn_grandchildren", args=[600]))
    done = await reports.expect("succeeded", "g")
    assert isinstance(done.result, dict) and set(done.result) == {"program", "forked"}
    pids = [done.result["program"], done.result["forked"]]
    await wait_until(lambda: not any(map(alive, pids)), 5 * unit(), "grandchildren to go")


@pytest.mark.parametrize(("job_timeout", "limit"), [(None, 0.3), (0.2, 0.2)])
async def test_a_tasks_declared_timeout_applies_unless_the_job_has_its_own(
    reports: Reports, job_timeout: float | None, limit: float
) -> None:
    registry = TaskRegistry()
    registry.register("nap", sample_tasks.nap, timeout=0.3 * unit())
    executor = Executor(1, 10 * unit(), registry, reports)
    executor.submit(job("n", task="nap", args=[30], timeout=job_timeout))
    timed_out = await reports.expect("timed_out", "n")
    assert timed_out.error == f"timed out after {limit * unit():g} s"
    await executor.shutdown()


async def test_unknown_task_fails_at_once_without_a_process(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    executor = make_executor()
    executor.submit(job("u", task="rm -rf /", attempt=2))
    [failed] = reports.seen
    assert (failed.event, failed.id, failed.attempt) == ("failed", "u", 2)
    assert failed.error is not None and "unknown task 'rm -rf /'" in failed.error
    assert (executor.running, executor.queued) == (0, 0)
    assert children() == []


@BOTH_LAUNCHERS
async def test_job_past_its_timeout_is_stopped_and_reported(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    make_executor().submit(job("t", runtime=60, timeout=0.3))
    await reports.expect("started", "t")
    started = time.monotonic()
    timed_out = await reports.expect("timed_out", "t")
    assert time.monotonic() - started >= 0.3 * unit()
    assert timed_out.error == f"timed out after {0.3 * unit():g} s"
    assert timed_out.exit_code == -signal.SIGTERM
    assert children() == []


async def test_default_timeout_applies_when_the_job_has_none(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    make_executor(default_timeout=0.2).submit(job("t", runtime=60))
    await reports.expect("timed_out", "t")


async def test_without_any_timeout_a_job_runs_until_it_ends(reports: Reports) -> None:
    executor = Executor(1, None, TaskRegistry(TEST_TASKS), reports)
    try:
        executor.submit(job("free", runtime=0.3))
        await reports.expect("started", "free")
        assert not executor._deadlines.armed, "no deadline is watched"
        await reports.expect("succeeded", "free")
    finally:
        await executor.shutdown()


async def test_each_job_times_out_at_its_own_deadline(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    executor = make_executor(size=3)
    executor.submit(job("late", runtime=60, timeout=30))
    executor.submit(job("soon", runtime=60, timeout=0.6))
    await reports.expect("started", "soon")
    # Started last with the earliest deadline: the one timer must move forward for it.
    executor.submit(job("sooner", runtime=60, timeout=0.2))
    await reports.expect("timed_out", "sooner")
    assert [r.id for r in reports.seen if r.event == "timed_out"] == ["sooner"]
    await reports.expect("timed_out", "soon")
    assert executor.running == 1 and reports.of("late") == [("started", 1)]


async def test_waiting_job_starts_when_a_slot_frees(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    executor = make_executor(size=1)
    executor.submit(job("first", runtime=0.1))
    executor.submit(job("second", runtime=0.05))
    assert (executor.running, executor.queued) == (1, 1)
    await reports.expect("succeeded", "first")
    await reports.expect("succeeded", "second")
    assert [r.event for r in reports.seen] == ["started", "succeeded", "started", "succeeded"]


@BOTH_LAUNCHERS
async def test_evicted_job_is_reported_once_gone_and_never_restarted_here(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    executor = make_executor(size=1)
    executor.submit(job("low", priority=9, runtime=60, evictions=2))
    low_pid = executor.pid_of("low")
    assert low_pid is not None
    executor.submit(job("urgent", priority=0, runtime=0.05))
    # The slot went to the urgent job at once; the evicted one is reported once reaped.
    assert reports.of("urgent") == [("started", 1)]
    assert executor.snapshot().stopping == ("low",)
    evicted = await reports.expect("evicted", "low")
    assert not psutil.pid_exists(low_pid)
    assert evicted.evictions == 3 and evicted.exit_code is None
    assert evicted.wall_s is not None and evicted.cpu_s is not None
    await reports.expect("succeeded", "urgent")
    assert reports.of("low") == [("started", 1), ("evicted", 1)]
    assert (executor.running, executor.queued, executor.held()) == (0, 0, [])
    assert not executor.holding


async def test_a_job_that_is_not_evictable_keeps_its_slot(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    executor = make_executor(size=1)
    executor.submit(job("pinned", priority=9, runtime=0.2, evictable=False))
    executor.submit(job("urgent", priority=0, runtime=0.05))
    assert executor.queued == 1
    await reports.expect("succeeded", "urgent")
    assert reports.of("pinned") == [("started", 1), ("succeeded", 1)]
    assert [r.event for r in reports.seen] == ["started", "succeeded", "started", "succeeded"]


@BOTH_LAUNCHERS
async def test_eviction_stops_the_jobs_grandchildren(
    make_executor: ExecutorFactory,
    reports: Reports,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    monkeypatch.setenv(PIDFILE, str(pidfile))
    executor = make_executor(size=1)
    executor.submit(job("low", priority=9, runtime=60, task="with_grandchild"))
    await wait_until(pidfile.exists, 5 * unit(), "the grandchild's pid file")
    grandchild = int(pidfile.read_text())
    assert alive(grandchild)
    executor.submit(job("urgent", priority=0, runtime=0.05))
    await reports.expect("evicted", "low")
    await wait_until(lambda: not alive(grandchild), 5 * unit(), "the grandchild to die")


async def test_job_that_ends_by_itself_as_it_is_evicted_is_final(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    executor = make_executor(size=1)
    executor.submit(job("low", priority=9, runtime=0.01))
    pid = executor.pid_of("low")
    assert pid is not None
    # Block until the process has exited, without reaping it: the executor has not yet
    # seen the exit when the urgent job arrives.
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    executor.submit(job("urgent", priority=0, runtime=0.05))
    await reports.expect("succeeded", "low")
    await reports.expect("succeeded", "urgent")
    # It ended by itself before the eviction stopped it: that is its one report.
    assert reports.of("low") == [("started", 1), ("succeeded", 1)]
    assert (executor.running, executor.queued) == (0, 0)


@BOTH_LAUNCHERS
async def test_job_timing_out_as_it_is_evicted_is_final(
    make_executor: ExecutorFactory,
    reports: Reports,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    termfile = tmp_path / "term"
    monkeypatch.setenv(TERMFILE, str(termfile))
    executor = make_executor(size=1, grace=0.5)
    executor.submit(job("low", priority=9, runtime=60, task="stubborn", timeout=0.2))
    # The timeout has sent SIGTERM; the job ignores it until SIGKILL after the grace.
    await wait_until(termfile.exists, 5 * unit(), "the timeout's SIGTERM")
    executor.submit(job("urgent", priority=0, runtime=0.05))
    timed_out = await reports.expect("timed_out", "low")
    assert timed_out.exit_code == -signal.SIGKILL
    await reports.expect("succeeded", "urgent")
    assert reports.of("low") == [("started", 1), ("timed_out", 1)]
    assert (executor.running, executor.queued) == (0, 0)


async def test_newer_attempt_replaces_the_older_one(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    executor = make_executor(size=2)
    executor.submit(job("j", runtime=60, attempt=1))
    old_pid = executor.pid_of("j")
    executor.submit(job("j", runtime=0.05, attempt=2))
    executor.submit(job("j", runtime=60, attempt=1))  # stale: ignored
    await reports.expect("started", "j", nth=2)
    assert old_pid is not None and not psutil.pid_exists(old_pid)
    await reports.expect("succeeded", "j")
    assert reports.of("j") == [("started", 1), ("started", 2), ("succeeded", 2)]


async def test_newer_attempt_of_a_waiting_job_replaces_it(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    executor = make_executor(size=1)
    executor.submit(job("first", runtime=0.1))
    executor.submit(job("j", attempt=1))
    executor.submit(job("j", attempt=2))
    assert executor.queued == 1
    await reports.expect("succeeded", "j")
    assert reports.of("j") == [("started", 2), ("succeeded", 2)]


async def test_newer_attempt_of_an_evicted_job_replaces_it(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    executor = make_executor(size=1)
    executor.submit(job("j", priority=9, runtime=60, attempt=1))
    executor.submit(job("urgent", priority=0, runtime=0.2))
    executor.submit(job("j", priority=9, runtime=0.05, attempt=2))
    await reports.expect("succeeded", "urgent")
    await reports.expect("succeeded", "j")
    # Attempt 1 was taken back before its process was gone: it is reported no further.
    assert reports.of("j") == [("started", 1), ("started", 2), ("succeeded", 2)]


async def test_drop_unqueues_a_waiting_job_and_reports_nothing(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    executor = make_executor(size=1)
    executor.submit(job("first", runtime=0.1))
    executor.submit(job("waiting", attempt=2))
    assert not executor.drop("waiting", 1)  # another attempt: stale, nothing changes
    assert executor.queued == 1
    assert executor.drop("waiting", 2)
    assert executor.queued == 0 and executor.held() == [Held("first", 1)]
    assert executor.holding
    await reports.expect("succeeded", "first")
    assert reports.of("waiting") == []


async def test_drop_stops_a_running_job_and_reports_nothing_more(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    executor = make_executor(size=1)
    executor.submit(job("j", runtime=60))
    executor.submit(job("next", runtime=0.05))
    pid = executor.pid_of("j")
    assert pid is not None
    assert executor.drop("j", 1)
    assert not executor.drop("j", 1)  # already gone
    # Its slot is free at once; the job itself is stopped in the background.
    await reports.expect("succeeded", "next")
    await wait_until(lambda: not psutil.pid_exists(pid), 5 * unit(), "the job to be reaped")
    assert reports.of("j") == [("started", 1)]
    assert executor.held() == []


async def test_cancel_of_a_waiting_job_reports_cancelled_at_once(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    executor = make_executor(size=1)
    executor.submit(job("first", runtime=60))
    executor.submit(job("waiting", attempt=3))
    assert executor.cancel("waiting", 3)
    assert reports.of("waiting") == [("cancelled", 3)]
    assert executor.queued == 0


@BOTH_LAUNCHERS
async def test_cancel_of_a_running_job_reports_cancelled_once_its_tree_is_gone(
    make_executor: ExecutorFactory,
    reports: Reports,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    monkeypatch.setenv(PIDFILE, str(pidfile))
    executor = make_executor(size=1)
    executor.submit(job("g", runtime=60, task="with_grandchild", attempt=2))
    await wait_until(pidfile.exists, 5 * unit(), "the grandchild's pid file")
    grandchild = int(pidfile.read_text())
    assert executor.cancel("g", 2)
    assert executor.held() == [Held("g", 2)]  # held until its report is made
    assert executor.cancel("g", 2)  # a repeated cancel changes nothing
    cancelled = await reports.expect("cancelled", "g")
    # The whole group was sent SIGKILL before the report; the grandchild dies as it lands.
    await wait_until(lambda: not alive(grandchild), 5 * unit(), "the grandchild to die")
    assert cancelled.wall_s is not None and cancelled.attempt == 2
    assert reports.of("g") == [("started", 2), ("cancelled", 2)]
    assert executor.held() == [] and executor.running == 0


async def test_cancel_during_an_eviction_reports_cancelled_instead(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    executor = make_executor(size=1)
    executor.submit(job("low", priority=9, runtime=60))
    executor.submit(job("urgent", priority=0, runtime=60))
    assert executor.held() == [Held("low", 1), Held("urgent", 1)]
    assert executor.cancel("low", 1)
    await reports.expect("cancelled", "low")
    assert reports.of("low") == [("started", 1), ("cancelled", 1)]


@BOTH_LAUNCHERS
async def test_the_task_sees_its_job_id_and_attempt_in_its_environment(
    make_executor: ExecutorFactory,
    reports: Reports,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probe = tmp_path / "probe"
    monkeypatch.setenv(sample_tasks.PROBE_ENV, str(probe))
    make_executor().submit(job("job-42", task="job-probe", attempt=7))
    await reports.expect("succeeded", "job-42")
    assert probe.read_text() == "job-42 7"
    assert "SCHEDBUS_JOB_ID" not in os.environ  # set in the job process only


async def test_an_error_in_the_event_sink_reaches_on_error(reports: Reports) -> None:
    errors: list[BaseException] = []

    def sink(report: Report, assignment: Assignment) -> None:
        if report.event == "succeeded":
            raise RuntimeError("sink broke")

    executor = Executor(1, 10.0, TaskRegistry(TEST_TASKS), sink, on_error=errors.append)
    executor.submit(job("a"))
    await wait_until(lambda: bool(errors), 5 * unit(), "the error to be passed on")
    assert str(errors[0]) == "sink broke"
    await executor.shutdown()


def test_background_errors_are_logged_by_default(caplog: pytest.LogCaptureFixture) -> None:
    executor_module._log_error(RuntimeError("lost"))
    assert "an executor task failed" in caplog.text and "RuntimeError: lost" in caplog.text


async def test_failed_fork_reports_failed_and_frees_the_slot(
    make_executor: ExecutorFactory, reports: Reports, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = make_executor(size=1)
    executor.submit(job("first", runtime=0.1))
    real_start = JobProcess.start
    calls = 0

    def start_failing_once(self: JobProcess) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        real_start(self)

    monkeypatch.setattr(JobProcess, "start", start_failing_once)
    executor.submit(job("second"))
    executor.submit(job("third"))
    failed = await reports.expect("failed", "second")
    assert failed.error == (
        "could not start the job process: [Errno 11] Resource temporarily unavailable"
    )
    await reports.expect("succeeded", "third")


async def test_no_descriptors_for_the_result_pipe_fails_the_job_and_frees_the_slot(
    make_executor: ExecutorFactory, reports: Reports, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = make_executor(size=1)

    def out_of_descriptors() -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(job_run, "ResultPipe", out_of_descriptors)
    executor.submit(job("first"))
    monkeypatch.undo()
    executor.submit(job("second"))
    failed = await reports.expect("failed", "first")
    assert failed.error == "could not start the job process: [Errno 24] Too many open files"
    await reports.expect("succeeded", "second")


@BOTH_LAUNCHERS
async def test_shutdown_stops_every_process_tree_and_the_queue(
    make_executor: ExecutorFactory,
    reports: Reports,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    monkeypatch.setenv(PIDFILE, str(pidfile))
    executor = make_executor(size=2)
    executor.submit(job("g", runtime=60, task="with_grandchild"))
    executor.submit(job("s", runtime=60))
    executor.submit(job("waiting", runtime=60))
    executor.submit(job("urgent", priority=0, runtime=60))  # evicts one: a stopping process
    await wait_until(pidfile.exists, 5 * unit(), "the grandchild's pid file")
    assert len(children()) >= 3
    await executor.shutdown()
    assert children() == []
    assert (executor.running, executor.queued) == (0, 0)
    assert {r.event for r in reports.seen} == {"started", "evicted"}
    with pytest.raises(RuntimeError, match="shut down"):
        executor.submit(job("late"))


async def test_a_release_after_the_lease_may_have_lapsed_starts_nothing(
    make_executor: ExecutorFactory, reports: Reports
) -> None:
    """The fence is checked again at the release, as at a start: a held attempt released
    once the lease may have lapsed exits unstarted and goes back ``revoked``."""
    lease_holds = [True]
    executor = make_executor(may_start=lambda: lease_holds[0])
    executor.submit(job("late", runtime=60), hold=True)
    await wait_until(lambda: executor.pid_of("late") is not None, 5 * unit(), "it forks")
    lease_holds[0] = False
    executor.release("late", 1)
    await reports.expect("revoked", "late")
    assert reports.of("late") == [("revoked", 1)]
