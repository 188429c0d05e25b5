"""The fork server keeps every guarantee of forking jobs from the scheduler: each test runs
the executor on every path (real job processes; a real fork server running its compiled
modules, one running its source, or the scheduler forking), and a fork server killed
mid-job is replaced while its job is reported failed, never lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sysconfig
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import forkserver_tasks
import output_tasks
import psutil
import pytest
import sample_tasks
import signal_tasks
from conftest import unit, wait_until
from test_executor import Reports, job

from scheduler.tasks import TaskRegistry
from scheduler.worker import forkserver_link
from scheduler.worker.executor import Executor
from scheduler.worker.forkserver_launcher import ForkServerLauncher
from scheduler.worker.forkserver_link import MAX_FAILED_STARTS
from scheduler.worker.job_output import JobLogs
from scheduler.worker.launch import Launcher, ProcessLauncher

REGISTRY = TaskRegistry(
    {
        "sleep": TaskRegistry().get("sleep"),
        "add": sample_tasks.add,
        "explode": sample_tasks.explode,
        "escape": sample_tasks.escape,
        "spin": sample_tasks.spin,
        "stepper": output_tasks.stepper,
        "chatty": output_tasks.chatty,
        "exit3": forkserver_tasks.exit3,
        "policy": forkserver_tasks.scheduling_policy,
    }
)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def escapees() -> Iterator[list[int]]:
    """Pids a test saw started: SIGKILLed after it if still alive."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def run_fork_servers(code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Have the fork servers started from now on run their ``"compiled"`` modules (which
    ``scripts/setup`` builds) or their ``"source"``."""
    if code == "source":
        monkeypatch.setenv("SCHEDBUS_PURE", "1")
    else:
        assert forkserver_link.compiled_build(), "no fresh compiled fork server: scripts/setup"


@pytest.fixture(params=["compiled", "source"])
def fork_server_code(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way a fork server runs: its compiled modules, or its source."""
    run_fork_servers(request.param, monkeypatch)
    return str(request.param)


@pytest.fixture(params=["compiled fork server", "source fork server", "scheduler"])
async def launcher(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Launcher]:
    """Each path: a fork server running its compiled modules or its source forks the
    jobs, or the scheduler (this process) does."""
    if request.param == "scheduler":
        yield ProcessLauncher()
        return
    run_fork_servers(request.param.split()[0], monkeypatch)
    fork_server = ForkServerLauncher(REGISTRY)
    await fork_server.ready()
    yield fork_server
    await fork_server.close()


@pytest.fixture
async def executor(launcher: Launcher, reports: Reports, tmp_path: Path) -> AsyncIterator[Executor]:
    """One slot, job logs under ``tmp_path``, shut down before its launcher closes."""
    made = Executor(
        1, 10 * unit(), REGISTRY, reports, launcher=launcher, logs=JobLogs(tmp_path, "s")
    )
    yield made
    await made.shutdown()


async def escaped(path: Path, escapees: list[int]) -> list[int]:
    """The pids the ``escape`` job writing ``path`` started (in sessions of their own)."""
    await wait_until(path.exists, 10 * unit(), "the job to report its descendants")
    pids = list(json.loads(path.read_text())["pids"].values())
    escapees.extend(pids)
    return pids


async def all_gone(pids: list[int]) -> None:
    await wait_until(lambda: not any(map(alive, pids)), 5 * unit(), f"{pids} to be gone")


async def test_result_and_traceback(executor: Executor, reports: Reports) -> None:
    executor.submit(job("sum", task="add", args=[2, 3]))
    assert (await reports.expect("succeeded", "sum")).result == 5
    executor.submit(job("boom", task="explode", args=["on purpose"]))
    failed = await reports.expect("failed", "boom")
    assert failed.error == "sample_tasks.TaskFailure: on purpose"
    assert failed.traceback is not None and "raise TaskFailure(message)" in failed.traceback


async def test_exit_status_cpu_and_peak_rss(executor: Executor, reports: Reports) -> None:
    executor.submit(job("three", task="exit3", args=[]))
    failed = await reports.expect("failed", "three")
    assert (failed.exit_code, failed.error) == (3, "exit code 3")
    executor.submit(job("busy", task="spin", args=[0.2 * unit()]))
    done = await reports.expect("succeeded", "busy")
    assert done.exit_code == 0 and done.cpu_s is not None and done.cpu_s >= 0.1 * unit()
    assert done.max_rss_kb is not None and done.max_rss_kb > 1000


async def test_output_and_progress(executor: Executor, reports: Reports, tmp_path: Path) -> None:
    go = tmp_path / "go"
    go.touch()
    executor.submit(job("steps", task="stepper", args=[2, str(go)]))
    await reports.expect("succeeded", "steps")
    assert [r.progress for r in reports.seen if r.event == "progress"][-1] == 1.0
    # Written to descriptor 1 (pytest swaps sys.stdout of this process, which the
    # scheduler path's jobs inherit).
    executor.submit(job("talk", task="chatty", args=["hi"]))
    done = await reports.expect("succeeded", "talk")
    assert done.output is not None and "hi raw fd 1\nhi subprocess\n" in done.output


async def test_a_job_and_what_it_starts_run_as_batch_work(
    executor: Executor, reports: Reports
) -> None:
    executor.submit(job("batch", task="policy", args=[]))
    assert (await reports.expect("succeeded", "batch")).result == {"job": True, "its_child": True}


async def test_timeout_kills_the_tree_with_its_setsid_grandchildren(
    executor: Executor, reports: Reports, tmp_path: Path, escapees: list[int]
) -> None:
    pidfile = tmp_path / "pids.json"
    args: dict[str, object] = {"pidfile": str(pidfile), "then": "hang"}
    executor.submit(job("hang", task="escape", args=args, timeout=1.0))
    pids = await escaped(pidfile, escapees)
    await reports.expect("timed_out", "hang", timeout=10)
    await all_gone(pids)


async def test_eviction_kills_the_tree(
    executor: Executor, reports: Reports, tmp_path: Path, escapees: list[int]
) -> None:
    pidfile = tmp_path / "pids.json"
    args: dict[str, object] = {"pidfile": str(pidfile), "then": "hang"}
    executor.submit(job("low", priority=9, task="escape", args=args))
    pids = await escaped(pidfile, escapees)
    executor.submit(job("urgent", priority=0, task="add", args=[1, 1]))
    await reports.expect("evicted", "low")
    await all_gone(pids)
    await reports.expect("succeeded", "urgent")


async def test_cancel_kills_the_tree(
    executor: Executor, reports: Reports, tmp_path: Path, escapees: list[int]
) -> None:
    pidfile = tmp_path / "pids.json"
    executor.submit(job("hang", task="escape", args={"pidfile": str(pidfile), "then": "hang"}))
    pids = await escaped(pidfile, escapees)
    pid = executor.pid_of("hang")
    assert pid is not None
    assert executor.cancel("hang", 1)
    await reports.expect("cancelled", "hang")
    await all_gone([pid, *pids])


async def test_a_killed_fork_server_is_replaced_and_its_job_reported_failed(
    reports: Reports, tmp_path: Path, escapees: list[int]
) -> None:
    fork_server = ForkServerLauncher(REGISTRY)
    executor = Executor(2, 10 * unit(), REGISTRY, reports, launcher=fork_server)
    try:
        await fork_server.ready()
        pidfile = tmp_path / "pids.json"
        executor.submit(job("held", task="escape", args={"pidfile": str(pidfile), "then": "hang"}))
        pids = await escaped(pidfile, escapees)
        job_pid = executor.pid_of("held")
        assert job_pid is not None
        first = fork_server.link.pid
        os.kill(first, signal.SIGKILL)
        failed = await reports.expect("failed", "held")
        assert failed.error == (
            f"the fork server (pid {first}) died (killed by signal 9 (SIGKILL)); "
            "the job died with it"
        )
        await all_gone([job_pid, *pids])
        executor.submit(job("next", task="add", args=[1, 2]))
        assert (await reports.expect("succeeded", "next")).result == 3
        assert fork_server.link.pid != first and fork_server.link.restarts == 1
    finally:
        await executor.shutdown()  # which closes the fork server


async def test_a_frozen_fork_server_is_killed_and_replaced_and_the_job_forked_by_the_next(
    reports: Reports,
) -> None:
    fork_server = ForkServerLauncher(REGISTRY, timeout=unit())
    executor = Executor(1, 10 * unit(), REGISTRY, reports, launcher=fork_server)
    try:
        await fork_server.ready()
        first = fork_server.link.pid
        os.kill(first, signal.SIGSTOP)  # it will never answer
        executor.submit(job("sum", task="add", args=[2, 3]))
        assert (await reports.expect("succeeded", "sum")).result == 5
        assert fork_server.link.pid != first and fork_server.link.restarts == 1
        assert not alive(first)
    finally:
        await executor.shutdown()  # which closes the fork server


async def test_arguments_that_do_not_travel_are_unservable() -> None:
    link = forkserver_link.ForkServerLink(REGISTRY)
    try:
        await link.ready()
        with pytest.raises(forkserver_link.Unservable, match="arguments do not travel"):
            link.fork(forkserver_tasks.exit3, (object(),), {}, None)
    finally:
        link.close()


async def test_a_pid_is_never_trusted_once_its_fork_server_is_gone() -> None:
    """The scheduler opens each job's pidfd itself: if the fork server died in between,
    another process may have reaped the job and taken its pid, so the pidfd is dropped."""
    link = forkserver_link.ForkServerLink(REGISTRY)
    try:
        await link.ready()
        server, pid, pidfd = link.fork(forkserver_tasks.exit3, (), {}, None)
        os.close(pidfd)
        os.kill(server.proc.pid, signal.SIGKILL)
        await wait_until(
            lambda: (
                os.waitid(os.P_PID, server.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                is not None
            ),
            5 * unit(),
            "the fork server to die",
        )
        assert link._pidfd(server, pid) == -1
        assert server.gone is not None and link.pid != server.proc.pid and link.restarts == 1
        assert link.reap(server, pid).lost is not None
    finally:
        link.close()


async def test_jobs_start_with_default_handlers_whatever_their_task_module_set(
    monkeypatch: pytest.MonkeyPatch, reports: Reports
) -> None:
    """The fork server imports the task modules; a handler one sets as it is imported
    must not reach the jobs, which start with SIGTERM and SIGINT at their defaults."""
    monkeypatch.setenv("SCHEDBUS_TEST_HANDLERS_AT_IMPORT", "1")
    registry = TaskRegistry({"default_handlers": signal_tasks.default_handlers})
    executor = Executor(1, 10 * unit(), registry, reports, launcher=ForkServerLauncher(registry))
    try:
        executor.submit(job("handlers", task="default_handlers", args=[]))
        assert (await reports.expect("succeeded", "handlers")).result == [True, True]
    finally:
        await executor.shutdown()  # which closes the fork server


@pytest.mark.parametrize(
    "probe",
    [
        # asyncio, websockets, click and the executor: the scheduler's, not a job's
        "network_modules",
        # croniter and the wire's structs: only a task that declares a schedule needs them
        "schedule_modules",
        # logging and threading, whose fork hooks would run in every job process
        "fork_hook_modules",
    ],
)
async def test_the_fork_server_imports_nothing_its_tasks_do_not_need(
    probe: str, fork_server_code: str
) -> None:
    registry = TaskRegistry({probe: getattr(forkserver_tasks, probe)})
    reports = Reports()
    executor = Executor(1, 10 * unit(), registry, reports, launcher=ForkServerLauncher(registry))
    try:
        executor.submit(job("probe", task=probe, args=[]))
        assert (await reports.expect("succeeded", "probe")).result == []
    finally:
        await executor.shutdown()  # which closes the fork server


async def job_side_files(reports: Reports) -> list[str]:
    """Where a job forked by a new fork server had its setup and the fork server's loop
    from."""
    registry = TaskRegistry({"job_side_files": forkserver_tasks.job_side_files})
    executor = Executor(1, 10 * unit(), registry, reports, launcher=ForkServerLauncher(registry))
    try:
        executor.submit(job("files", task="job_side_files", args=[]))
        files = (await reports.expect("succeeded", "files")).result
        assert isinstance(files, list)
        return [str(file) for file in files]
    finally:
        await executor.shutdown()  # which closes the fork server


async def test_a_fork_server_runs_its_compiled_modules_unless_told_not_to(
    fork_server_code: str, reports: Reports
) -> None:
    files = await job_side_files(reports)
    suffix = ".py" if fork_server_code == "source" else sysconfig.get_config_var("EXT_SUFFIX")
    assert all(file.endswith(suffix) for file in files), files


async def test_a_fork_server_runs_its_source_when_the_build_is_stale(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reports: Reports,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stale = tmp_path / "forkserver"
    stale.mkdir()
    (stale / "fingerprint").write_text("0" * 64 + "\n")
    monkeypatch.setenv("SCHEDBUS_COMPILED_DIR", str(tmp_path))
    caplog.set_level("INFO", "scheduler.worker.forkserver_link")
    assert all(file.endswith(".py") for file in await job_side_files(reports))
    assert f"the compiled forkserver build in {stale} was built from other sources" in caplog.text


async def test_a_broken_compiled_build_costs_one_start_then_the_source_runs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reports: Reports,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A build whose sources match but whose extension is cut short (a full disk during
    the build, a bad copy): its fork server dies (SIGBUS) before it is ready, and the next
    one runs the source, not the scheduler's forks."""
    built = forkserver_link.compiled_build()
    assert built, "no fresh compiled fork server: scripts/setup"
    broken = tmp_path / "forkserver"
    shutil.copytree(built, broken)
    (extension,) = broken.rglob("forkserver.*.so")
    extension.write_bytes(extension.read_bytes()[:1000])
    monkeypatch.setenv("SCHEDBUS_COMPILED_DIR", str(tmp_path))
    caplog.set_level("INFO", "scheduler.worker.forkserver_link")
    registry = TaskRegistry({"job_side_files": forkserver_tasks.job_side_files})
    fork_server = ForkServerLauncher(registry)
    executor = Executor(1, 10 * unit(), registry, reports, launcher=fork_server)
    try:
        executor.submit(job("files", task="job_side_files", args=[]))
        files = (await reports.expect("succeeded", "files")).result
        assert isinstance(files, list) and all(str(f).endswith(".py") for f in files), files
        assert fork_server.link.restarts == 1
        assert f"compiled modules in {broken} died before it was ready" in caplog.text
    finally:
        await executor.shutdown()  # which closes the fork server


async def test_jobs_are_forked_from_the_scheduler_when_no_fork_server_starts(
    monkeypatch: pytest.MonkeyPatch, reports: Reports
) -> None:
    monkeypatch.setattr(forkserver_link, "COMMAND", "raise SystemExit(1)")
    fork_server = ForkServerLauncher(REGISTRY)
    executor = Executor(1, 10 * unit(), REGISTRY, reports, launcher=fork_server)
    try:
        for n in range(3):
            executor.submit(job(f"j{n}", task="add", args=[n, 1]))
            assert (await reports.expect("succeeded", f"j{n}")).result == n + 1
        assert fork_server.link.restarts == MAX_FAILED_STARTS - 1
    finally:
        await executor.shutdown()  # which closes the fork server
