"""README "How jobs run", "Stopping": the tree is frozen "repeated until a look at /proc finds
nobody new, so nothing can fork its way out", and a member that ignores SIGTERM while the
job process dies of it is killed when the job process is reaped.

A descendant that ignores SIGTERM and keeps re-forking (each generation calls ``setsid()``,
forks its successor and exits) used to go on for seconds after its job was reported
``timed_out``: the job process died of the SIGTERM at once, its survivors were killed by
pidfd without a freeze, and each later generation, adopted by the scheduler, was killed
one per sweep after it had already forked the next. Now nothing of the chain runs once
the scheduler has reported the job's end, however the job was started."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import ROOT, Commands, unit, wait_until
from reforking_tasks import _hop
from test_containment import LAUNCHERS, escapees, worker, zombie_children
from test_scheduler_client import Peer
from test_user_tasks import gone

from scheduler.worker import containment

__all__ = ["escapees"]  # a fixture, used by name

TASKS = str(ROOT / "tests" / "reforking_tasks.py")


async def time_out_a_chain(
    peer: Peer, worker_pid: int, tmp_path: Path, die_after: float | None = None
) -> None:
    """Run a job whose child re-forks every 5 ms until the job's timeout (or until the job
    process SIGKILLs itself after ``die_after`` seconds); check that the chain forked
    nothing after the scheduler reported the job's end and that every generation was
    reaped."""
    pidfile = tmp_path / "chain.pid"
    args = {"pidfile": str(pidfile), "hop": 0.005, "until": time.time() + 30 * unit()}
    event = "timed_out" if die_after is None else "failed"
    await peer.assign(
        "chain", 1, task="hopper", args=args | {"die_after": die_after}, timeout=0.5 * unit()
    )
    await wait_until(pidfile.exists, 10 * unit(), "the chain to start")
    await peer.expect("report", event=event, id="chain", timeout=20)
    at_the_end = pidfile.read_text()
    await wait_until(lambda: gone(int(pidfile.read_text())), 10 * unit(), "the chain to end")
    assert pidfile.read_text() == at_the_end, "the chain forked on after its job ended"
    await wait_until(
        lambda: not zombie_children(worker_pid), 10 * unit(), "every generation reaped"
    )


@LAUNCHERS
async def test_a_reforking_chain_forks_no_more_once_its_job_is_reported_timed_out(
    commands: Commands, tmp_path: Path, mode: tuple[str, ...]
) -> None:
    async with worker(commands, *mode, tasks=TASKS) as (peer, worker_pid):
        await time_out_a_chain(peer, worker_pid, tmp_path)


async def test_a_reforking_chain_forks_no_more_once_its_job_that_died_by_a_signal_is_reported(
    commands: Commands, tmp_path: Path
) -> None:
    async with worker(commands, tasks=TASKS) as (peer, worker_pid):
        await time_out_a_chain(peer, worker_pid, tmp_path, die_after=0.1 * unit())


# The freeze on its own, in this process: a root that is a subreaper, as a job process is.


def _reforking_root(pidfile: Path) -> int:
    """Fork a subreaper whose child re-forks every millisecond (see ``reforking_tasks``);
    return the subreaper's pid."""
    root = os.fork()
    if root == 0:
        try:
            containment.set_child_subreaper()
            if os.fork() == 0:
                _hop(str(pidfile), 0.001, time.time() + 30 * unit())
            time.sleep(600)
        finally:
            os._exit(1)
    return root


def test_kill_tree_freezes_a_chain_that_reforks_every_millisecond(
    tmp_path: Path, escapees: list[int]
) -> None:
    pidfile = tmp_path / "chain.pid"
    root = _reforking_root(pidfile)
    escapees.append(root)
    seen: set[str] = set()
    deadline = time.monotonic() + 10 * unit()
    while len(seen) < 3:  # generations
        assert time.monotonic() < deadline, "the chain did not start"
        if pidfile.exists():
            seen.add(pidfile.read_text())
        time.sleep(0.002)
    assert containment.kill_tree(root, include_root=True) >= 2
    at_the_end = pidfile.read_text()
    os.waitpid(root, 0)
    escapees.append(int(at_the_end))
    deadline = time.monotonic() + 10 * unit()
    while not gone(int(pidfile.read_text())):
        assert time.monotonic() < deadline, "the chain lived on"
        time.sleep(0.01)
    assert pidfile.read_text() == at_the_end, "the chain forked on after the kill"


@pytest.mark.parametrize(
    ("pid", "after", "upto", "handed_out"),
    [(5, 4, 9, True), (4, 4, 9, False), (10, 4, 9, False), (9, 4, 9, True),
     (32000, 31000, 400, True), (350, 31000, 400, True), (500, 31000, 400, False),
     (31000, 31000, 400, False), (7, 7, 7, False)],
)  # fmt: skip
def test_pids_handed_out_since_a_mark_wrap_round(
    pid: int, after: int, upto: int, handed_out: bool
) -> None:
    assert containment._handed_out(pid, after, upto) is handed_out
