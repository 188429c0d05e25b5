"""Tests for scheduler.worker.process against real forked job processes."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import io
import json
import multiprocessing
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psutil
import pytest

from scheduler.worker import child
from scheduler.worker.process import JobProcess, ProcessResult

UNIT = float(os.environ.get("SCHEDBUS_TEST_UNIT", "1.0"))
ROOT = Path(__file__).resolve().parent.parent
PR_GET_PDEATHSIG = 2
PR_GET_CHILD_SUBREAPER = 37

Spawn = Callable[..., JobProcess]


def units(n: float) -> float:
    """Return ``n`` test time units in seconds."""
    return n * UNIT


# Job targets: module-level so that any start method could reach them.


def _noop() -> None:
    pass


def _exit_with(code: int) -> None:
    sys.exit(code)


def _raise() -> None:
    raise ValueError("boom from the job")


def _burn_cpu(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _exit_on_input(read_fd: int) -> None:
    os.read(read_fd, 1)


def _fork_grandchild(ready_fd: int, then: str) -> None:
    """Fork a grandchild that sleeps (holding every inherited fd), report its pid, then ``then``.

    With ``ignore_term`` and ``report_term`` both survive SIGTERM; ``report_term``
    also writes ``TERM`` on ``ready_fd`` when it arrives.
    """
    if then == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif then == "report_term":
        signal.signal(signal.SIGTERM, lambda signum, frame: os.write(ready_fd, b"TERM\n"))
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    os.write(ready_fd, f"{pid}\n".encode())
    if then != "exit":
        time.sleep(30)


def _report_isolation(report_fd: int) -> None:
    sockets = [fd for fd in os.listdir("/proc/self/fd") if _is_socket(int(fd))]
    deathsig = ctypes.c_int()
    ctypes.CDLL(None).prctl(PR_GET_PDEATHSIG, ctypes.byref(deathsig))
    subreaper = ctypes.c_int()
    ctypes.CDLL(None).prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(subreaper))
    facts = {
        "own group": os.getpgid(0) == os.getpid(),
        "own session": os.getsid(0) == os.getpid(),
        "no sockets": sockets == [],
        "SIGINT default": signal.getsignal(signal.SIGINT) == signal.SIG_DFL,
        "SIGTERM default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
        "no wakeup fd": signal.set_wakeup_fd(-1) == -1,
        "nothing blocked": signal.pthread_sigmask(signal.SIG_BLOCK, []) == set(),
        "death signal": deathsig.value == signal.SIGRTMIN + 1,
        "child subreaper": subreaper.value == 1,
        "stdin reads /dev/null": sys.stdin.read() == "" and sys.stdin.encoding == "utf-8",
        "descriptor 0 is /dev/null": os.fstat(0).st_rdev == os.stat(os.devnull).st_rdev,
    }
    os.write(report_fd, json.dumps(facts).encode())


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


# Helpers and fixtures.


def _is_gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def _wait_gone(proc: psutil.Process) -> bool:
    deadline = time.monotonic() + units(5)
    while not _is_gone(proc):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def _read_line(fd: int) -> str:
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await asyncio.wait_for(readable, units(5))
    finally:
        loop.remove_reader(fd)
    return os.read(fd, 4096).decode()


@pytest.fixture
def leftovers() -> Iterator[list[psutil.Process]]:
    """Processes (grandchildren) to SIGKILL after the test if they still run."""
    procs: list[psutil.Process] = []
    yield procs
    for proc in procs:
        if not _is_gone(proc):
            proc.kill()


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """Start JobProcesses; stop those still running after the test."""
    jobs: list[JobProcess] = []

    def start(target: Callable[..., object], *args: object, grace: float = 2.0) -> JobProcess:
        job = JobProcess(target, args, grace=grace)
        job.start()
        jobs.append(job)
        return job

    yield start
    for job in jobs:
        if not job.done:
            await job.stop(grace=0)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A pipe ``(read_fd, write_fd)``, closed after the test."""
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    os.close(read_fd)
    os.close(write_fd)


async def _grandchild(read_fd: int, leftovers: list[psutil.Process]) -> psutil.Process:
    grandchild = psutil.Process(int(await _read_line(read_fd)))
    leftovers.append(grandchild)
    return grandchild


async def _short_lived_grandchild(read_fd: int, leftovers: list[psutil.Process]) -> int:
    """The pid of a grandchild the job may already have killed by the time it is read."""
    pid = int(await _read_line(read_fd))
    try:
        leftovers.append(psutil.Process(pid))
    except psutil.NoSuchProcess:
        pass
    return pid


async def _wait_pid_gone(pid: int) -> bool:
    try:
        return await _wait_gone(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return True


# Results.


async def test_run_reports_exit_code_and_usage(spawn: Spawn) -> None:
    result = await spawn(_burn_cpu, units(0.05)).wait()
    assert result.exit_code == 0
    assert result.outcome == "exited"
    assert result.cpu_s > 0
    assert result.max_rss_kb > 0
    assert result.wall_s > 0


async def test_exit_status_is_reported(spawn: Spawn) -> None:
    result = await spawn(_exit_with, 3).wait()
    assert (result.exit_code, result.outcome) == (3, "exited")


async def test_raising_target_prints_traceback_and_exits_1(
    spawn: Spawn, capfd: pytest.CaptureFixture[str]
) -> None:
    result = await spawn(_raise).wait()
    assert result.exit_code == 1
    assert "ValueError: boom from the job" in capfd.readouterr().err


async def test_properties_follow_the_lifecycle(spawn: Spawn) -> None:
    idle = JobProcess(_noop)
    assert (idle.done, idle.result) == (False, None)
    with pytest.raises(RuntimeError):
        _ = idle.pid
    with pytest.raises(RuntimeError):
        await idle.wait()
    job = spawn(_noop)
    result = await job.wait()
    assert job.done and job.result is result
    assert result.exit_code == 0
    with pytest.raises(RuntimeError):
        job.start()


def test_start_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        JobProcess(_noop).start()


async def test_a_job_that_cannot_be_watched_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_fds(pid: int, flags: int = 0) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    fds = set(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "pidfd_open", out_of_fds)
    job = JobProcess(_sleep, (units(30),))
    with pytest.raises(OSError):
        job.start()
    assert not psutil.pid_exists(job.pid)
    assert set(os.listdir("/proc/self/fd")) == fds


# Waiting.


async def test_concurrent_waiters_and_stoppers_share_one_result(spawn: Spawn) -> None:
    job = spawn(_sleep, units(30))
    results = await asyncio.gather(
        job.wait(), job.wait(timeout=units(30)), job.stop(), job.stop(grace=0), job.wait()
    )
    assert all(result is results[0] for result in results)
    assert results[0].outcome == "stopped"
    assert job.result is results[0]


async def test_waiting_keeps_the_loop_free_and_starts_no_thread(
    spawn: Spawn, pipe: tuple[int, int]
) -> None:
    read_fd, write_fd = pipe
    threads = threading.active_count()
    job = spawn(_exit_on_input, read_fd)
    # The loop must run its timers while the job blocks, and cancelling a waiter
    # must leave the job running.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(job.wait(), units(0.1))
    assert not job.done
    assert threading.active_count() == threads
    os.write(write_fd, b"x")
    result = await job.wait()
    assert (result.exit_code, result.outcome) == (0, "exited")
    assert threading.active_count() == threads


async def test_no_fd_or_child_is_left_behind(spawn: Spawn) -> None:
    fds = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        await spawn(_noop).wait()
    assert set(os.listdir("/proc/self/fd")) == fds
    assert multiprocessing.active_children() == []


async def test_a_later_start_does_not_steal_an_exited_jobs_status(spawn: Spawn) -> None:
    job = spawn(_exit_with, 7)
    os.waitid(os.P_PID, job.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
    spawn(_noop)  # multiprocessing reaps the children it tracks on each start
    assert (await job.wait()).exit_code == 7


async def test_done_callback_fires_once_from_the_loop(spawn: Spawn) -> None:
    job = spawn(_noop)
    early: list[ProcessResult] = []
    early_called = asyncio.Event()

    def on_done(result: ProcessResult) -> None:
        early.append(result)
        early_called.set()

    job.add_done_callback(on_done)
    result = await job.wait()
    await asyncio.wait_for(early_called.wait(), units(5))
    late: list[ProcessResult] = []
    late_called = asyncio.Event()

    def on_late(result: ProcessResult) -> None:
        late.append(result)
        late_called.set()

    job.add_done_callback(on_late)
    assert late == []  # scheduled with call_soon, not called inline
    await asyncio.wait_for(late_called.wait(), units(5))
    assert early == [result] and late == [result]


async def test_done_callback_runs_as_the_exit_is_seen_and_its_error_reaches_the_loop(
    spawn: Spawn,
) -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))
    job = spawn(_noop)
    seen: list[bool] = []

    def on_done(result: ProcessResult) -> None:
        seen.append(job.done)  # already reaped, and before any waiter resumes
        raise RuntimeError("callback broke")

    def after(result: ProcessResult) -> None:
        seen.append(True)

    job.add_done_callback(on_done)
    job.add_done_callback(after)
    try:
        await job.wait()
        assert seen == [True, True]
        assert [str(context["exception"]) for context in errors] == ["callback broke"]
    finally:
        loop.set_exception_handler(None)


async def test_a_stop_that_finds_the_job_exited_calls_back_later(spawn: Spawn) -> None:
    job = spawn(_exit_with, 0)
    os.waitid(os.P_PID, job.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
    called: list[ProcessResult] = []
    job.add_done_callback(called.append)
    stopping = asyncio.ensure_future(job.stop())
    await asyncio.sleep(0)  # the stop reaps the job...
    assert job.done and called == []  # ...and leaves the callback to the loop
    result = await stopping
    await asyncio.sleep(0)
    assert called == [result] and result.outcome == "exited"


async def test_time_out_stops_the_tree_as_a_timeout(
    spawn: Spawn, pipe: tuple[int, int], leftovers: list[psutil.Process]
) -> None:
    read_fd, write_fd = pipe
    job = spawn(_fork_grandchild, write_fd, "sleep")
    grandchild = await _grandchild(read_fd, leftovers)
    job.time_out()
    result = await job.wait()
    assert (result.exit_code, result.outcome) == (-signal.SIGTERM, "timed_out")
    assert await _wait_gone(grandchild)
    job.time_out()  # already reaped: nothing to do
    assert job.result is result


def test_time_out_needs_a_started_job() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        JobProcess(_noop).time_out()


async def test_a_status_reaped_elsewhere_ends_the_job_without_exit_code(spawn: Spawn) -> None:
    job = spawn(_noop)
    os.waitpid(job.pid, 0)
    result = await job.stop()
    assert (result.exit_code, result.outcome) == (None, "exited")


# Stopping and timeouts.


async def test_timeout_stops_the_tree(
    spawn: Spawn, pipe: tuple[int, int], leftovers: list[psutil.Process]
) -> None:
    read_fd, write_fd = pipe
    job = spawn(_fork_grandchild, write_fd, "sleep")
    grandchild = await _grandchild(read_fd, leftovers)
    result = await job.wait(timeout=units(0.2))
    assert (result.exit_code, result.outcome) == (-signal.SIGTERM, "timed_out")
    assert await _wait_gone(grandchild)


async def test_stop_escalates_to_sigkill_after_the_grace(
    spawn: Spawn, pipe: tuple[int, int], leftovers: list[psutil.Process]
) -> None:
    read_fd, write_fd = pipe
    job = spawn(_fork_grandchild, write_fd, "ignore_term", grace=units(0.2))
    grandchild = await _grandchild(read_fd, leftovers)
    result = await job.stop()
    assert (result.exit_code, result.outcome) == (-signal.SIGKILL, "stopped")
    assert result.wall_s >= units(0.2)
    assert await _wait_gone(grandchild)


async def test_a_shorter_grace_hurries_a_stop_under_way(
    spawn: Spawn, pipe: tuple[int, int], leftovers: list[psutil.Process]
) -> None:
    read_fd, write_fd = pipe
    job = spawn(_fork_grandchild, write_fd, "report_term", grace=units(30))
    await _grandchild(read_fd, leftovers)
    timing_out = asyncio.create_task(job.wait(timeout=units(0.1)))
    assert "TERM" in await _read_line(read_fd)
    result = await asyncio.wait_for(job.stop(grace=0), units(5))
    assert (result.exit_code, result.outcome) == (-signal.SIGKILL, "timed_out")
    assert await timing_out is result


async def test_normal_exit_kills_what_the_job_left_behind(
    spawn: Spawn, pipe: tuple[int, int], leftovers: list[psutil.Process]
) -> None:
    read_fd, write_fd = pipe
    job = spawn(_fork_grandchild, write_fd, "exit")
    grandchild = await _short_lived_grandchild(read_fd, leftovers)
    # The grandchild holds multiprocessing's sentinel pipe: waiting on it would time out.
    result = await job.wait(timeout=units(10))
    assert (result.exit_code, result.outcome) == (0, "exited")
    assert await _wait_pid_gone(grandchild)


async def test_stop_after_the_job_ended_by_itself_reports_exited(spawn: Spawn) -> None:
    job = spawn(_exit_with, 0)
    os.waitid(os.P_PID, job.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
    result = await job.stop()
    assert (result.exit_code, result.outcome) == (0, "exited")
    assert await job.wait(timeout=0) is result


async def test_an_immediate_stop_never_runs_the_parents_handlers(spawn: Spawn) -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    loop.add_signal_handler(signal.SIGTERM, fired.append, "SIGTERM")
    try:
        for _ in range(10):
            result = await spawn(_sleep, units(30)).stop(grace=units(5))
            assert (result.exit_code, result.outcome) == (-signal.SIGTERM, "stopped")
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    assert fired == []


# The child's environment.


async def test_child_is_isolated_from_the_scheduler(spawn: Spawn, pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGTERM, lambda: None)
    try:
        with socket.create_server(("127.0.0.1", 0)):
            result = await spawn(_report_isolation, write_fd).wait()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
    assert result.exit_code == 0
    facts = json.loads(os.read(read_fd, 4096))
    assert facts == dict.fromkeys(facts, True)


def _report_no_stdin(report_fd: int) -> None:
    os.write(report_fd, b"none" if sys.stdin is None else b"some")


async def test_a_scheduler_without_stdin_gives_its_jobs_none(
    spawn: Spawn, pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    read_fd, write_fd = pipe
    monkeypatch.setattr(sys, "stdin", None)
    assert (await spawn(_report_no_stdin, write_fd).wait()).exit_code == 0
    assert os.read(read_fd, 16) == b"none"


def _release_onto_closed_stdin(report_fd: int) -> None:
    os.close(0)
    child.release_fds([], stdin=True)
    is_null = os.fstat(0).st_rdev == os.stat(os.devnull).st_rdev
    os.write(report_fd, b"null" if is_null else b"other")


async def test_descriptor_0_becomes_dev_null_even_if_it_was_closed(
    spawn: Spawn, pipe: tuple[int, int]
) -> None:
    read_fd, write_fd = pipe
    assert (await spawn(_release_onto_closed_stdin, write_fd).wait()).exit_code == 0
    assert os.read(read_fd, 16) == b"null"


async def test_start_leaves_the_schedulers_stdin_as_it_was(
    spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = io.StringIO("the scheduler's own")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert (await spawn(_noop).wait()).exit_code == 0
    assert sys.stdin is stdin and not stdin.closed


def test_child_kills_its_group_if_the_scheduler_is_already_gone() -> None:
    # -1 stands for a parent pid recorded before the scheduler died: getppid() never matches it.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    proc = multiprocessing.get_context("fork").Process(
        target=child.child_main, args=(-1, mask, [], None, _noop, (), {})
    )
    proc.start()
    try:
        proc.join(units(10))
        assert proc.exitcode == -signal.SIGKILL
    finally:
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        proc.close()


HELPER = textwrap.dedent(
    """
    import asyncio, os, subprocess, time
    from scheduler.worker.process import JobProcess

    def job():
        grandchild = subprocess.Popen(["sleep", "30"])
        print(os.getpid(), grandchild.pid, flush=True)
        time.sleep(30)

    async def main():
        JobProcess(job).start()
        await asyncio.sleep(30)

    asyncio.run(main())
    """
)


def test_job_tree_dies_when_the_scheduler_is_sigkilled() -> None:
    helper = subprocess.Popen([sys.executable, "-c", HELPER], cwd=ROOT, stdout=subprocess.PIPE)
    assert helper.stdout is not None
    tree: list[psutil.Process] = []
    try:
        readable, _, _ = select.select([helper.stdout], [], [], units(10))
        assert readable, "the helper did not report its job"
        tree = [psutil.Process(int(pid)) for pid in helper.stdout.readline().split()]
        assert len(tree) == 2 and tree[0].ppid() == helper.pid
        helper.kill()
        helper.wait()
        deadline = time.monotonic() + units(5)
        while not all(_is_gone(proc) for proc in tree) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(_is_gone(proc) for proc in tree)
    finally:
        helper.kill()
        helper.wait()
        helper.stdout.close()
        for proc in tree:
            if not _is_gone(proc):
                proc.kill()


def _daemonize_then(report_fd: int, then: str) -> None:
    """Start a double-forked ``setsid()`` daemon that ignores SIGTERM, write its pid on
    ``report_fd``, then return (``return``), sleep (``sleep``) or ignore SIGTERM and sleep
    (``stubborn``)."""
    read_fd, write_fd = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.write(write_fd, f"{os.getpid()}\n".encode())
            time.sleep(30)
        os._exit(0)
    os.waitpid(middle, 0)
    if then == "stubborn":
        # Before the pid is reported: the test stops the job as soon as it reads it.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.write(report_fd, os.read(read_fd, 64))
    if then != "return":
        time.sleep(30)


async def test_a_job_that_returns_kills_the_daemon_it_started(
    spawn: Spawn, pipe: tuple[int, int], leftovers: list[psutil.Process]
) -> None:
    read_fd, write_fd = pipe
    job = spawn(_daemonize_then, write_fd, "return")
    daemon = await _short_lived_grandchild(read_fd, leftovers)
    assert (await job.wait()).exit_code == 0
    assert await _wait_pid_gone(daemon)


async def test_the_kill_after_the_grace_reaches_a_daemon_in_its_own_session(
    spawn: Spawn, pipe: tuple[int, int], leftovers: list[psutil.Process]
) -> None:
    read_fd, write_fd = pipe
    job = spawn(_daemonize_then, write_fd, "stubborn", grace=units(0.2))
    daemon = await _grandchild(read_fd, leftovers)
    assert os.getsid(daemon.pid) != os.getsid(job.pid)
    result = await job.stop()
    assert (result.outcome, result.exit_code) == ("stopped", -signal.SIGKILL)
    assert await _wait_gone(daemon)


async def test_a_daemon_that_ignores_sigterm_dies_with_the_job_the_sigterm_ended(
    spawn: Spawn, pipe: tuple[int, int], leftovers: list[psutil.Process]
) -> None:
    # This test process is no subreaper: once the job process dies, the daemon belongs
    # to init, and only the pidfd taken when the SIGTERM was sent still reaches it.
    read_fd, write_fd = pipe
    job = spawn(_daemonize_then, write_fd, "sleep", grace=units(30))
    daemon = await _grandchild(read_fd, leftovers)
    result = await job.stop()
    assert (result.outcome, result.exit_code) == ("stopped", -signal.SIGTERM)
    assert await _wait_gone(daemon)
