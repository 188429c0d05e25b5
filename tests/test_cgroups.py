"""``--cgroup PATH``: each job in a cgroup of its own inside a delegated cgroup, killed
whole when it ends, and what a scheduler killed together with its jobs left is killed when
it starts again. Needs a cgroup v2 directory this test may make below its own cgroup (as
systemd's ``Delegate=yes`` would give one); skipped where there is none."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from conftest import Commands, is_fork_server, jobs_of, unit, wait_until
from test_containment import alive, all_gone, escapees, started_escape, worker

from scheduler.worker import cli as worker_command
from scheduler.worker.cgroups import PREFIX, CgroupError, JobCgroups

__all__ = ["escapees"]  # a fixture, used by name


def _own_cgroup() -> Path | None:
    """This process's cgroup v2 directory, if cgroup2 is mounted."""
    mount = next(
        (line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
         if line.split()[2] == "cgroup2"),
        None,
    )  # fmt: skip
    own = next(
        (line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines()
         if line.startswith("0::")),
        None,
    )  # fmt: skip
    if mount is None or own is None:
        return None
    return Path(mount) / own.lstrip("/")


def _remove_tree(cgroup: Path) -> None:
    for child in cgroup.iterdir():
        if child.is_dir():
            _remove_tree(child)
    JobCgroups.kill(cgroup)
    deadline = time.monotonic() + 5
    while not JobCgroups.remove(cgroup) and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.fixture
def delegated() -> Iterator[Path]:
    """A fresh cgroup below this process's own, removed (with what is in it) afterwards."""
    own = _own_cgroup()
    if own is None:
        pytest.skip("no cgroup v2 hierarchy is mounted")
    path = own / f"schedbus-test-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup to delegate here: {exc}")
    try:
        yield path
    finally:
        _remove_tree(path)


def job_cgroups(path: Path) -> list[Path]:
    return sorted(path.glob(f"{PREFIX}*"))


def test_a_directory_that_is_not_a_delegated_cgroup_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match="is not a cgroup v2 directory"):
        JobCgroups.open(tmp_path)
    result = CliRunner().invoke(
        worker_command.cli, ["--tasks", "sample_tasks", "--cgroup", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "Invalid value for '--cgroup'" in result.output


def test_the_root_cgroup_is_refused() -> None:
    own = _own_cgroup()
    if own is None or (own / "cgroup.kill").exists():
        pytest.skip("this process is not in the root cgroup")
    with pytest.raises(CgroupError, match="has no cgroup.kill: give a cgroup below the root"):
        JobCgroups.open(own)


def test_opening_clears_only_what_gone_schedulers_left(delegated: Path) -> None:
    (delegated / f"{PREFIX}1-1").mkdir()  # pid 1 runs: its scheduler is alive
    (delegated / f"{PREFIX}{os.getpid()}-1").mkdir()  # our own pid: from a killed one
    (delegated / f"{PREFIX}garbled").mkdir()
    JobCgroups.open(delegated)
    assert job_cgroups(delegated) == [delegated / f"{PREFIX}1-1"]


async def test_each_job_runs_in_its_own_cgroup_removed_when_it_ends(
    commands: Commands, tmp_path: Path, delegated: Path, escapees: list[int]
) -> None:
    async with worker(commands, "--cgroup", str(delegated)) as (peer, worker_pid):
        pids = await started_escape(peer, tmp_path, "hang", escapees)
        [job] = jobs_of(worker_pid)
        [cgroup] = job_cgroups(delegated)
        members = {int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()}
        assert {job.pid, *pids} <= members
        await peer.stop("hang", 1, "cancelled", kind="cancel")
        await peer.expect("report", event="cancelled", id="hang")
        await all_gone(pids)
        await wait_until(lambda: not job_cgroups(delegated), 5 * unit(), "the cgroup removed")


async def test_a_restarted_scheduler_kills_what_its_killed_jobs_left(
    commands: Commands, tmp_path: Path, delegated: Path, escapees: list[int]
) -> None:
    async with worker(commands, "--cgroup", str(delegated)) as (peer, worker_pid):
        pids = await started_escape(peer, tmp_path, "hang", escapees)
        [job] = jobs_of(worker_pid)
        servers = [p.pid for p in psutil.Process(worker_pid).children() if is_fork_server(p)]
        escapees.extend([job.pid, *servers])
        # All of them frozen first, then killed: nobody is left to run the death handler or
        # reap orphans (the job's orphans would go to its fork server, then to the worker).
        chain = [job.pid, *servers, worker_pid]
        for pid in chain:
            os.kill(pid, signal.SIGSTOP)
        for pid in chain:
            os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: not alive(worker_pid), 5 * unit(), "the worker to die")
        assert all(map(alive, pids)), "without the cgroup they would survive"
    async with worker(commands, "--cgroup", str(delegated)):
        await all_gone(pids)
        assert job_cgroups(delegated) == []
