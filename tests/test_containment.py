"""A job's processes never outlive it: a real worker runs a task that starts a child in a
session of its own and a double-forked ``setsid()`` daemon (which ignores SIGTERM), and
neither survives the job's success, failure, timeout, cancel, its dying by a signal or by
``os._exit``, or the worker's SIGKILL. Also the tree walk and the freeze-kill on their own."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import psutil
import pytest
from conftest import Commands, is_fork_server, jobs_of, unit, wait_until
from test_scheduler_client import FakeBus, Peer, port_of

from scheduler.worker import containment, proc_stat

TASKS = "tests/sample_tasks.py"
LAUNCHERS = pytest.mark.parametrize(
    "mode",
    [(), ("--no-fork-server",), ("--warm", "3")],
    ids=["fork_server", "scheduler_forks", "warm"],
)
"""Runs a test on every way to start jobs (the worker's extra options): forked by the fork
server (the default), forked by the scheduler itself, and in warm mode."""


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def escapees() -> Iterator[list[int]]:
    """Pids a test saw started; any still alive after it is SIGKILLed (they may have left
    the test's process tree, where the ``commands`` fixture would not find them)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@asynccontextmanager
async def worker(
    commands: Commands, *options: str, tasks: str = TASKS
) -> AsyncIterator[tuple[Peer, int]]:
    """A real ``python -m scheduler.worker`` serving ``tasks`` (the sample tasks),
    registered with a fake bus: yields the bus's side of the connection and the worker's
    pid."""
    bus = FakeBus()
    async with bus.serve() as server:
        url = f"ws://127.0.0.1:{port_of(server)}"
        proc = await commands.start(
            "scheduler.worker", "--tasks", tasks, "--bus", url, "--name", "w1", *options
        )
        peer = await bus.peer(timeout=15)
        await peer.register("w1")
        yield peer, proc.pid


async def started_escape(
    peer: Peer, tmp_path: Path, then: str, escapees: list[int], **job: object
) -> list[int]:
    """Assign an ``escape`` job; return the pids of its two escaping descendants once it has
    started them, having checked that they left the job's session."""
    pidfile = tmp_path / f"{then}.json"
    args = {"pidfile": str(pidfile), "then": then}
    await peer.assign(then, 1, task="escape", args=args, **job)
    await wait_until(pidfile.exists, 10 * unit(), "the job to report its descendants")
    reported = json.loads(pidfile.read_text())
    escapees.extend(reported["pids"].values())
    assert reported["job_session"] not in reported["sessions"].values(), "they left it"
    return list(reported["pids"].values())


async def all_gone(pids: list[int]) -> None:
    await wait_until(lambda: not any(map(alive, pids)), 5 * unit(), f"{pids} to be gone")


def zombie_children(pid: int) -> list[psutil.Process]:
    """The zombie children of ``pid``: what nobody has reaped."""
    zombies = []
    for child in psutil.Process(pid).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child)
        except psutil.NoSuchProcess:
            pass
    return zombies


@LAUNCHERS
@pytest.mark.parametrize(("then", "event"), [("return", "succeeded"), ("raise", "failed")])
async def test_nothing_a_job_started_outlives_its_own_end(
    commands: Commands,
    tmp_path: Path,
    escapees: list[int],
    mode: tuple[str, ...],
    then: str,
    event: str,
) -> None:
    async with worker(commands, *mode) as (peer, _):
        pids = await started_escape(peer, tmp_path, then, escapees)
        await peer.expect("report", event=event, id=then)
        await all_gone(pids)


@LAUNCHERS
@pytest.mark.parametrize("then", ["kill", "exit"])
async def test_what_a_job_that_dies_abruptly_leaves_is_killed_and_reaped_by_the_scheduler(
    commands: Commands, tmp_path: Path, escapees: list[int], mode: tuple[str, ...], then: str
) -> None:
    async with worker(commands, *mode) as (peer, worker_pid):
        pids = await started_escape(peer, tmp_path, then, escapees)
        await peer.expect("report", id=then)
        await all_gone(pids)
        await wait_until(
            lambda: not zombie_children(worker_pid), 5 * unit(), "no zombie left unreaped"
        )


@LAUNCHERS
async def test_nothing_outlives_a_timeout(
    commands: Commands, tmp_path: Path, escapees: list[int], mode: tuple[str, ...]
) -> None:
    async with worker(commands, *mode) as (peer, _):
        pids = await started_escape(peer, tmp_path, "hang", escapees, timeout=1.0 * unit())
        await peer.expect("report", event="timed_out", id="hang", timeout=10)
        await all_gone(pids)


@LAUNCHERS
async def test_nothing_outlives_a_cancel(
    commands: Commands, tmp_path: Path, escapees: list[int], mode: tuple[str, ...]
) -> None:
    async with worker(commands, *mode) as (peer, worker_pid):
        pids = await started_escape(peer, tmp_path, "hang", escapees)
        await peer.stop("hang", 1, "cancelled", kind="cancel")
        await peer.expect("report", event="cancelled", id="hang")
        await all_gone(pids)
        await wait_until(
            lambda: not zombie_children(worker_pid), 5 * unit(), "no zombie left unreaped"
        )


@LAUNCHERS
async def test_nothing_outlives_an_eviction(
    commands: Commands, tmp_path: Path, escapees: list[int], mode: tuple[str, ...]
) -> None:
    async with worker(commands, "-s", "1", *mode) as (peer, _):
        pids = await started_escape(peer, tmp_path, "hang", escapees, priority=9)
        await peer.assign("urgent", 1, priority=0)
        await peer.expect("report", event="evicted", id="hang")
        await all_gone(pids)
        await peer.expect("report", event="succeeded", id="urgent")


@LAUNCHERS
async def test_nothing_outlives_the_workers_sigterm(
    commands: Commands, tmp_path: Path, escapees: list[int], mode: tuple[str, ...]
) -> None:
    async with worker(commands, *mode) as (peer, worker_pid):
        pids = await started_escape(peer, tmp_path, "hang", escapees)
        os.kill(worker_pid, signal.SIGTERM)
        await wait_until(lambda: not alive(worker_pid), 10 * unit(), "the worker to exit")
        await all_gone(pids)


@LAUNCHERS
async def test_nothing_outlives_the_workers_sigkill(
    commands: Commands, tmp_path: Path, escapees: list[int], mode: tuple[str, ...]
) -> None:
    async with worker(commands, *mode) as (peer, worker_pid):
        pids = await started_escape(peer, tmp_path, "hang", escapees)
        [job] = jobs_of(worker_pid)
        # The job and, on the fork server's path, the fork server.
        children = {job.pid, *(child.pid for child in psutil.Process(worker_pid).children())}
        escapees.extend(children)
        os.kill(worker_pid, signal.SIGKILL)
        await all_gone([*children, *pids])


async def test_a_killed_fork_server_is_replaced_and_its_job_reported_failed(
    commands: Commands, tmp_path: Path, escapees: list[int]
) -> None:
    async with worker(commands) as (peer, worker_pid):
        pids = await started_escape(peer, tmp_path, "hang", escapees)
        [job] = jobs_of(worker_pid)
        [server] = [p for p in psutil.Process(worker_pid).children() if is_fork_server(p)]
        escapees.extend([job.pid, server.pid])
        server.kill()
        failed = await peer.expect("report", event="failed", id="hang")
        assert f"the fork server (pid {server.pid}) died" in failed["error"]
        await all_gone([job.pid, *pids])
        await peer.assign("next", 1, runtime=0.01)
        await peer.expect("report", event="succeeded", id="next")
        [new_server] = [p for p in psutil.Process(worker_pid).children() if is_fork_server(p)]
        assert new_server.pid != server.pid


# The tree walk and the kill on their own, in this process.


def fork_tree(depth: int) -> int:
    """Fork a chain of ``depth`` sleeping processes below this one, each in a session of its
    own; return the first one's pid (the chain's members are its descendants)."""
    pid = os.fork()
    if pid == 0:
        os.setsid()
        for _ in range(depth - 1):
            if os.fork() != 0:
                break
            os.setsid()
        time.sleep(600)
        os._exit(0)
    return pid


def test_descendants_follow_parents_across_sessions(escapees: list[int]) -> None:
    top = fork_tree(3)
    escapees.append(top)
    deadline = time.monotonic() + 5 * unit()
    while len(found := proc_stat.descendants(top, proc_stat.proc_table())) < 2:
        assert time.monotonic() < deadline, "the chain did not form"
        time.sleep(0.01)
    escapees.extend(found)
    assert proc_stat.descendants(os.getpid(), proc_stat.proc_table())[:1] == [top]
    assert containment.kill_tree(top, include_root=True) == 3
    os.waitpid(top, 0)
    deadline = time.monotonic() + 5 * unit()
    while any(map(alive, found)):
        assert time.monotonic() < deadline, "the chain survived"
        time.sleep(0.01)


def test_a_refused_prctl_names_the_call_and_the_errno() -> None:
    with pytest.raises(OSError, match=r"prctl\(PR_BOGUS\): Invalid argument") as refused:
        containment.prctl("PR_BOGUS", (ctypes.c_int(-1), ctypes.c_ulong(0)))
    assert refused.value.errno == errno.EINVAL


def test_has_children_and_reap_children(escapees: list[int]) -> None:
    assert not containment.has_children()
    child = subprocess.Popen(["sleep", "600"])
    escapees.append(child.pid)
    assert containment.has_children()
    assert not containment.reap_children(0.01), "a live child is not waited for forever"
    child.kill()
    assert containment.reap_children(5 * unit())
    assert not containment.has_children()
    child.returncode = -signal.SIGKILL  # reaped above: Popen must not wait for it again


def test_signal_tree_reaches_a_root_not_yet_leading_its_group(escapees: list[int]) -> None:
    child = subprocess.Popen(["sleep", "600"])
    escapees.append(child.pid)
    containment.signal_tree(child.pid, signal.SIGTERM)
    assert child.wait(5 * unit()) == -signal.SIGTERM
