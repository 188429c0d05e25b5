"""Held assignments, the scheduler's side (issue 13): a real scheduler client behind a fake
bus forks a held job's process at once, but its task runs, its timeout counts and
``started`` is reported only once the bus releases it; a drop or a lost connection
before the release ends it unstarted and unreported. Job processes are real."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import unit, wait_until
from test_scheduler_client import FakeBus, Peer, fake_bus, start_client

from scheduler.policy.warm import WarmLimits
from scheduler.protocol import Assignment, Report
from scheduler.tasks import load_task_modules, run_task
from scheduler.worker import job_run
from scheduler.worker.client import SchedulerClient
from scheduler.worker.forkserver_launcher import ForkServerLauncher
from scheduler.worker.held import GoPipe
from scheduler.worker.launch import JobHandle, Launcher, ProcessLauncher
from scheduler.worker.process import ProcessResult
from scheduler.worker.task_result import ResultPipe

__all__ = ["fake_bus", "start_client"]  # fixtures, used by name

TASKS = Path(__file__).with_name("held_tasks.py")
LAUNCHERS = pytest.mark.parametrize(
    "fork_server", [True, False], ids=["fork_server", "scheduler_forks"]
)
"""Both ways a scheduler that takes holds forks a job: by its fork server, or itself."""

Seen = list[tuple[Report, Assignment]]
Start = Callable[..., SchedulerClient]


@pytest.fixture
def start(start_client: Start) -> Start:
    """Starts clients serving ``held_tasks`` in this loop (no timeout unless given);
    each is stopped and awaited at the end."""
    tasks = load_task_modules([str(TASKS)])

    def start_held(url: str, seen: Seen | None = None, **config: Any) -> SchedulerClient:
        config.setdefault("timeout", None)
        return start_client(url, seen, tasks=tasks, **config)

    return start_held


async def assign(peer: Peer, job_id: str, marker: Path, runtime: float, **job: object) -> None:
    """Assign attempt 1 of a ``mark`` job, held unless ``hold=False``."""
    hold = job.pop("hold", True)
    body = {"id": job_id, "attempt": 1, "priority": 5, "task": "mark"} | job
    body["args"] = {"path": str(marker), "runtime": runtime}
    await peer.send({"type": "assign", "job": body, "hold": hold})


async def release(peer: Peer, job_id: str, attempt: int = 1) -> None:
    await peer.send({"type": "release", "id": job_id, "attempt": attempt})


def waits_on_a_pipe(pid: int) -> bool:
    """Whether ``pid`` sleeps reading a pipe (its go pipe: nothing else it reads is one)."""
    try:
        return "pipe" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


async def held_process(client: SchedulerClient, job_id: str) -> int:
    """The pid of ``job_id``'s process, once it waits for its release."""
    pid: int | None = None

    def waiting() -> bool:
        nonlocal pid
        pid = client.executor.pid_of(job_id)
        return pid is not None and waits_on_a_pipe(pid)

    await wait_until(waiting, 10 * unit(), f"{job_id}'s process waiting for its release")
    assert pid is not None
    return pid


async def gone(client: SchedulerClient, job_id: str, pid: int) -> None:
    """Wait until ``pid`` is gone and the executor has reaped ``job_id``'s process."""

    def ended() -> bool:
        try:
            alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        return not alive and client.executor.pid_of(job_id) is None

    await wait_until(ended, 10 * unit(), f"{job_id}'s process {pid} to be gone")


async def closed(peer: Peer, job_id: str) -> list[str]:
    """The events of ``job_id`` once its closing report came."""
    await wait_until(lambda: len(peer.reports(job_id)) >= 2, 10 * unit(), f"{job_id} to end")
    return peer.reports(job_id)


async def round_trip(peer: Peer, tmp_path: Path, job_id: str) -> None:
    """Run an ordinary job to its end: every report made before it has been sent since."""
    await assign(peer, job_id, tmp_path / job_id, 0.0, hold=False)
    await peer.expect("report", event="succeeded", id=job_id)


@LAUNCHERS
async def test_a_held_job_runs_its_task_only_once_released(
    fake_bus: FakeBus, start: Start, tmp_path: Path, fork_server: bool
) -> None:
    seen: Seen = []
    client = start(fake_bus.url, seen, fork_server=fork_server)
    peer = await fake_bus.peer()
    await peer.register()
    marker = tmp_path / "ran"
    await assign(peer, "held", marker, 0.05 * unit())
    await held_process(client, "held")
    assert not marker.exists(), "the task ran before its release"
    assert peer.reports("held") == [] and seen == [], "reported before its release"
    await release(peer, "held")
    assert await closed(peer, "held") == ["started", "succeeded"]
    assert marker.read_text() == "ran"


@pytest.mark.parametrize(
    ("config", "hold"),
    [({}, True), ({"fork_server": False}, True), ({"warm": WarmLimits(max_jobs=10)}, None)],
    ids=["fork_server", "scheduler_forks", "warm"],
)
async def test_a_scheduler_registers_hold_unless_it_runs_warm(
    fake_bus: FakeBus, start: Start, config: dict[str, Any], hold: bool | None
) -> None:
    start(fake_bus.url, size=1, **config)
    peer = await fake_bus.peer()
    assert (await peer.register()).get("hold") is hold


async def test_a_held_attempt_released_while_queued_starts_as_any_job(
    fake_bus: FakeBus, start: Start, tmp_path: Path
) -> None:
    client = start(fake_bus.url, size=1)
    peer = await fake_bus.peer()
    await peer.register()
    await assign(peer, "first", tmp_path / "first", 60 * unit(), hold=False)
    await peer.expect("report", event="started", id="first")
    await assign(peer, "released", tmp_path / "released", 0.0)
    await assign(peer, "unreleased", tmp_path / "unreleased", 0.0)
    await wait_until(lambda: client.executor.queued == 2, 5 * unit(), "both to queue")
    await release(peer, "released")
    await peer.stop("first", 1, "a slot for the others", kind="cancel")
    assert await closed(peer, "released") == ["started", "succeeded"]
    await held_process(client, "unreleased")
    assert peer.reports("unreleased") == [] and not (tmp_path / "unreleased").exists()
    await release(peer, "unreleased")
    assert await closed(peer, "unreleased") == ["started", "succeeded"]


async def test_a_lost_connection_drops_what_awaits_its_release_and_keeps_the_rest(
    fake_bus: FakeBus, start: Start, tmp_path: Path
) -> None:
    seen: Seen = []
    client = start(fake_bus.url, seen, size=2)
    peer = await fake_bus.peer()
    await peer.register()
    await assign(peer, "journaled", tmp_path / "journaled", 60 * unit())
    await release(peer, "journaled")
    await peer.expect("report", event="started", id="journaled")
    kept = client.executor.pid_of("journaled")
    await assign(peer, "journaled", tmp_path / "journaled", 60 * unit())  # a repeat: ignored
    await assign(peer, "unjournaled", tmp_path / "unjournaled", 60 * unit())
    pid = await held_process(client, "unjournaled")
    peer.ws.transport.abort()  # lost, as a cut would lose it: no closing handshake
    again = await fake_bus.peer(timeout=10)
    register = await again.register()
    assert register["held"] == [{"id": "journaled", "attempt": 1}]
    await gone(client, "unjournaled", pid)
    assert client.executor.pid_of("journaled") == kept, "the released job runs on"
    await round_trip(again, tmp_path, "after")
    assert peer.reports("unjournaled") == [] and again.reports("unjournaled") == []
    assert [r for r, _ in seen if r.id == "unjournaled"] == []
    assert not (tmp_path / "unjournaled").exists()


async def test_a_lost_connection_starts_none_of_the_unreleased_attempts_queued_here(
    fake_bus: FakeBus, start: Start, tmp_path: Path
) -> None:
    """Dropping a forked unreleased attempt frees its slot: the unreleased one queued
    behind it must not start in it (as if released) before it is dropped too."""
    client = start(fake_bus.url, size=1)
    peer = await fake_bus.peer()
    await peer.register()
    await assign(peer, "forked", tmp_path / "forked", 60 * unit())
    pid = await held_process(client, "forked")
    await assign(peer, "queued", tmp_path / "queued", 60 * unit())
    await wait_until(lambda: client.executor.queued == 1, 5 * unit(), "queued behind it")
    peer.ws.transport.abort()
    again = await fake_bus.peer(timeout=10)
    assert (await again.register())["held"] == []
    await gone(client, "forked", pid)
    await round_trip(again, tmp_path, "after")
    assert not (tmp_path / "queued").exists(), "an unreleased attempt ran its task"
    assert again.reports("queued") == [] and again.reports("forked") == []


async def test_a_drop_before_the_release_kills_the_process_and_reports_nothing(
    fake_bus: FakeBus, start: Start, tmp_path: Path
) -> None:
    client = start(fake_bus.url)
    peer = await fake_bus.peer()
    await peer.register()
    await assign(peer, "refused", tmp_path / "refused", 60 * unit())
    pid = await held_process(client, "refused")
    await peer.stop("refused", 1, "the journal refused the assignment")
    await gone(client, "refused", pid)
    await round_trip(peer, tmp_path, "after")
    assert peer.reports("refused") == []
    assert not (tmp_path / "refused").exists()


async def test_the_timeout_counts_from_the_release(
    fake_bus: FakeBus, start: Start, tmp_path: Path
) -> None:
    timeout = 0.6 * unit()
    client = start(fake_bus.url)
    peer = await fake_bus.peer()
    await peer.register()
    await assign(peer, "slow", tmp_path / "slow", 0.3 * timeout, timeout=timeout)
    await held_process(client, "slow")
    await asyncio.sleep(2 * timeout)  # not a synchronization: time held is what is tested
    assert peer.reports("slow") == []
    await release(peer, "slow")
    assert await closed(peer, "slow") == ["started", "succeeded"]
    succeeded = await peer.expect("report", event="succeeded", id="slow")
    assert succeeded["wall_s"] < 2 * timeout, "the wall time counts the time held"


async def test_a_release_of_an_attempt_not_awaiting_one_is_ignored(
    fake_bus: FakeBus, start: Start, tmp_path: Path
) -> None:
    client = start(fake_bus.url)
    peer = await fake_bus.peer()
    await peer.register()
    await assign(peer, "held", tmp_path / "held", 0.0)
    await held_process(client, "held")
    await release(peer, "nobody")
    await release(peer, "held", attempt=2)
    await round_trip(peer, tmp_path, "between")
    assert peer.reports("held") == [] and not (tmp_path / "held").exists()
    await release(peer, "held")
    await release(peer, "held")  # already released
    assert await closed(peer, "held") == ["started", "succeeded"]
    await round_trip(peer, tmp_path, "after")
    assert peer.reports("held") == ["started", "succeeded"]


@LAUNCHERS
async def test_a_held_process_exits_unstarted_once_its_go_pipe_closes(
    tmp_path: Path, fork_server: bool
) -> None:
    tasks = load_task_modules([str(TASKS)])
    launcher: Launcher = ForkServerLauncher(tasks) if fork_server else ProcessLauncher()
    marker = tmp_path / "ran"
    go, result = GoPipe(), ResultPipe()
    process: JobHandle | None = None
    try:
        await launcher.ready()
        args = {"path": str(marker), "runtime": 0.0}
        process = launcher.job(
            run_task,
            (tasks.spec("mark").function, (), args, "held", 1),
            {"result_fd": result.write_fd, "go_fd": go.read_fd},
            name="job-held",
            grace=1.0,
            cgroups=None,
        )
        process.start()
        result.forked()
        go.forked()
        ended: asyncio.Future[ProcessResult] = asyncio.get_running_loop().create_future()
        process.add_done_callback(ended.set_result)
        pid = process.pid
        await wait_until(lambda: waits_on_a_pipe(pid), 10 * unit(), "the job waiting")
        go.close()  # the scheduler's end: the job forked by the scheduler holds none
        end = await asyncio.wait_for(ended, 5 * unit())
        assert (end.outcome, end.exit_code) == ("exited", 1)
        assert not marker.exists()
    finally:
        go.close()
        result.close()
        if process is not None and process.result is None:
            await process.stop()
        await launcher.close()


def test_a_job_process_whose_go_pipe_closes_unreleased_exits_without_its_task(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    go_read, go_write = os.pipe()
    result_read, result_write = os.pipe()
    os.close(go_write)
    try:
        with pytest.raises(SystemExit) as exited:
            run_task(mark, (str(marker), 0.0), {}, "j", 1, result_write, go_fd=go_read)
        assert exited.value.code == 1
        assert not marker.exists()
        os.close(result_write)
        assert os.read(result_read, 100) == b"", "no result written"
    finally:
        os.close(result_read)
    with pytest.raises(OSError):
        os.fstat(go_read)  # closed by the job


def mark(path: str, runtime: float) -> None:
    Path(path).write_text(json.dumps(runtime))


async def test_a_go_pipe_that_cannot_be_made_fails_the_job_and_frees_the_slot(
    fake_bus: FakeBus, start: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_descriptors() -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(job_run, "GoPipe", out_of_descriptors)
    start(fake_bus.url, size=1)
    peer = await fake_bus.peer()
    await peer.register()
    await assign(peer, "held", tmp_path / "held", 0.0)
    failed = await peer.expect("report", event="failed", id="held")
    assert failed["error"] == "could not start the job process: [Errno 24] Too many open files"
    await round_trip(peer, tmp_path, "after")
    assert not (tmp_path / "held").exists()


async def test_a_held_process_that_dies_before_its_release_is_reported_revoked(
    fake_bus: FakeBus, start: Start, tmp_path: Path
) -> None:
    """Killed while it waits (its fork server gone, say), its task never ran: the attempt
    goes back to the bus as ``revoked``, never ``failed``, and nothing says it started."""
    client = start(fake_bus.url)
    peer = await fake_bus.peer()
    await peer.register()
    await assign(peer, "orphaned", tmp_path / "orphaned", 60 * unit())
    pid = await held_process(client, "orphaned")
    os.kill(pid, signal.SIGKILL)
    report = await peer.expect("report", id="orphaned")
    assert (report["event"], report["attempt"]) == ("revoked", 1)
    assert peer.reports("orphaned") == ["revoked"]
    assert not (tmp_path / "orphaned").exists()
