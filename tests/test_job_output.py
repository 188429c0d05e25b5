"""A job's output and progress end to end: a real bus, a real ``worker`` serving
``tests/output_tasks.py`` with a log directory, real job processes.

What a task writes lands in its log file (not on the worker's terminal; a task that writes
nothing leaves none), its tail comes with the final event, ``jobs logs`` prints it and
``--follow`` prints a running job's output as it comes; progress reaches a watching
client, rate-limited, the last value always before the final event."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from conftest import ROOT, Commands, unit, wait_until

from scheduler.bus.config import BusConfig, bus_rules
from scheduler.bus.server import BusServer
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobEvent, JobPayload
from scheduler.protocol_types import FINAL_EVENTS, MAX_OUTPUT_BYTES

pytestmark = pytest.mark.timeout(90)

OUTPUT_TASKS = str(ROOT / "tests" / "output_tasks.py")


class Worker:
    """A worker process serving the output tasks, its log root and its terminal."""

    def __init__(
        self, proc: asyncio.subprocess.Process, logs: Path, stdout: Path, stderr: Path
    ) -> None:
        self.proc = proc
        self.logs = logs
        self.stdout = stdout
        self.stderr = stderr

    def terminal(self) -> str:
        """What the worker wrote to its own stdout and stderr."""
        return self.stdout.read_text() + self.stderr.read_text()


async def start_worker(bus: BusServer, commands: Commands, tmp_path: Path, *options: str) -> Worker:
    """A worker serving the output tasks with ``options``, once registered."""
    logs, stdout = tmp_path / "job-logs", tmp_path / "worker-stdout"
    with stdout.open("w") as out:
        proc = await commands.start(
            "scheduler.worker",
            *("--bus", bus.url, "--name", "w", "--tasks", OUTPUT_TASKS, "-s", "2"),
            *("--log-dir", str(logs), *options),
            stdout=out.fileno(),
        )
    await wait_until(lambda: "w" in bus.scheduler_names(), 20 * unit(), "the worker registers")
    return Worker(proc, logs, stdout, commands.log_paths[proc.pid])


@pytest.fixture
async def worker(bus: BusServer, commands: Commands, tmp_path: Path) -> Worker:
    return await start_worker(bus, commands, tmp_path)


async def run_job(
    client: ProducerClient, task: str, args: dict[str, object]
) -> tuple[str, list[JobEvent]]:
    """Submit a job of ``task`` with ``args``; its id and every event up to its final one."""
    job_id = await client.submit(JobPayload(task=task, args=args))
    return job_id, await events_until_final(client, job_id)


async def events_until_final(client: ProducerClient, job_id: str) -> list[JobEvent]:
    """Every event of ``job_id`` up to and including its final one."""
    seen: list[JobEvent] = []
    async with asyncio.timeout(30 * unit()):
        async for event in client.events():
            if event.id == job_id:
                seen.append(event)
                if event.event in FINAL_EVENTS:
                    return seen
    raise AssertionError(f"no final event for {job_id}: {seen}")


async def test_output_goes_to_the_log_file_and_its_tail_with_the_final_event(
    bus: BusServer, commands: Commands, worker: Worker
) -> None:
    async with ProducerClient(bus.url) as client:
        job_id, events = await run_job(client, "chatty", {"marker": "@@mark"})
    final = events[-1]
    assert (final.event, final.result) == ("succeeded", {"line_buffered": True})
    lines = ["print stdout", "print stderr", "raw fd 1", "subprocess"]
    assert final.output is not None
    assert sorted(final.output.splitlines()) == sorted(f"@@mark {line}" for line in lines)
    log_file = worker.logs / "w" / f"{job_id}.1.log"
    assert log_file.read_text() == final.output
    assert "@@mark" not in worker.terminal()

    code, out = await commands.run("scheduler.jobs", "--bus", bus.url, "logs", job_id, timeout=20)
    assert (code, out) == (0, final.output)
    code, _ = await commands.run("scheduler.jobs", "--bus", bus.url, "logs", "nope", timeout=20)
    assert code == 1


async def test_a_task_that_writes_nothing_leaves_no_file_and_a_stopped_worker_no_spool(
    bus: BusServer, worker: Worker
) -> None:
    async with ProducerClient(bus.url) as client:
        _, quiet_events = await run_job(client, "burst", {"count": 3})
        chatty, chatty_events = await run_job(client, "chatty", {"marker": "@@after"})
        assert chatty_events[-1].event == "succeeded"
    assert quiet_events[-1].event == "succeeded" and not quiet_events[-1].output
    directory = worker.logs / "w"
    visible = [p.name for p in directory.iterdir() if not p.name.startswith(".")]
    assert visible == [f"{chatty}.1.log"], "no file for the job that wrote nothing"
    worker.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(worker.proc.wait(), 20 * unit()) == 0
    assert [p.name for p in directory.iterdir()] == [f"{chatty}.1.log"], "no spool left"


async def test_output_a_killed_worker_left_unnamed_is_kept_by_the_next_one(
    commands: Commands, tmp_path: Path
) -> None:
    go, directory = tmp_path / "go", tmp_path / "job-logs" / "w"

    def written_spools() -> list[Path]:
        return [p for p in directory.iterdir() if p.name.startswith(".spool.") and p.stat().st_size]

    config = BusConfig(host="127.0.0.1", port=0, rules=bus_rules(lease=1.0 * unit()))
    async with BusServer(config) as bus, ProducerClient(bus.url) as client:
        worker = await start_worker(bus, commands, tmp_path)
        args: dict[str, object] = {"go_file": str(go), "text": "@@unnamed"}
        job_id = await client.submit(JobPayload(task="after_go", args=args))
        events = client.events()
        async with asyncio.timeout(30 * unit()):
            async for event in events:
                if event.id == job_id and event.event == "started":
                    break
        worker.proc.send_signal(signal.SIGSTOP)  # its look at the output cannot come now
        go.touch()
        await wait_until(lambda: bool(written_spools()), 10 * unit(), "the job writes")
        worker.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(worker.proc.wait(), 10 * unit())
        async with asyncio.timeout(30 * unit()):
            async for event in events:
                if event.id == job_id and event.event != "started":
                    break  # w's lease expired: its name is free
        again = await start_worker(bus, commands, tmp_path)
        _, quick_events = await run_job(client, "chatty", {"marker": "@@next"})
        assert quick_events[-1].event == "succeeded"
    orphans = list(directory.glob("orphaned.spool.*.log"))
    assert [p.read_text() for p in orphans] == ["@@unnamed\n"]
    assert f"job left unnamed is kept in {orphans[0]}" in again.terminal()


async def test_much_output_comes_in_bounded_chunks_and_the_tail_ends_it(
    bus: BusServer, worker: Worker
) -> None:
    async with ProducerClient(bus.url) as client:
        job_id, events = await run_job(client, "loud", {"kib": 64})
    chunks = [e.output or "" for e in events if e.event == "output"]
    assert chunks and all(0 < len(chunk.encode()) <= MAX_OUTPUT_BYTES for chunk in chunks)
    assert chunks[-1].endswith("the end\n")
    final = events[-1]
    assert final.output is not None and final.output.endswith("the end\n")
    assert len(final.output.encode()) <= MAX_OUTPUT_BYTES
    whole = (worker.logs / "w" / f"{job_id}.1.log").read_text()
    assert len(whole.splitlines()) == 64 * 16 + 1 and whole.endswith(final.output)


async def test_follow_prints_a_running_jobs_output_and_progress_reaches_watchers(
    bus: BusServer, commands: Commands, worker: Worker, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    async with ProducerClient(bus.url) as client:
        job_id = await client.submit(
            JobPayload(task="stepper", args={"steps": 4, "go_file": str(go)})
        )
        seen: list[JobEvent] = []
        async with asyncio.timeout(30 * unit()):
            async for event in client.events():
                seen.append(event)
                if event.event == "output" and "step 1" in (event.output or ""):
                    break
        follow = await commands.start(
            "scheduler.jobs",
            *("--bus", bus.url, "logs", job_id, "--follow"),
            stdout=asyncio.subprocess.PIPE,
        )
        assert follow.stdout is not None
        first = await asyncio.wait_for(follow.stdout.readline(), 20 * unit())
        assert first == b"step 1\n", "the output so far, from the job's status"
        running_log = worker.logs / "w" / f"{job_id}.1.log"
        assert running_log.read_text() == "step 1\n", "named at its first output, running"
        go.touch()
        seen += await events_until_final(client, job_id)
        rest = await asyncio.wait_for(follow.stdout.read(), 20 * unit())
        assert await asyncio.wait_for(follow.wait(), 20 * unit()) == 0
    assert rest == b"step 2\nstep 3\nstep 4\n"
    progress = [(e.progress, e.message) for e in seen if e.event == "progress"]
    assert progress[0] == (0.25, "step 1 of 4")
    assert progress[-1] == (1.0, "step 4 of 4"), "the last progress comes before the end"
    assert seen[-1].event == "succeeded"
    assert "--- " in commands.log_of(follow) and "succeeded" in commands.log_of(follow)


async def test_progress_is_rate_limited_and_its_last_value_arrives(
    bus: BusServer, worker: Worker
) -> None:
    async with ProducerClient(bus.url) as client:
        _, events = await run_job(client, "burst", {"count": 2000})
    progress = [e for e in events if e.event == "progress"]
    assert 1 <= len(progress) < 2000
    assert (progress[-1].progress, progress[-1].message) == (1.0, "last")
    assert events[-1].event == "succeeded"


async def test_a_bad_progress_call_fails_the_job_naming_the_argument(
    bus: BusServer, worker: Worker
) -> None:
    async with ProducerClient(bus.url) as client:
        _, events = await run_job(client, "bad_progress", {"fraction": 1.5, "message": "x"})
    assert events[-1].event == "failed"
    assert events[-1].error == "ValueError: progress: fraction must be from 0.0 to 1.0, not 1.5"


async def test_without_job_logs_output_stays_on_the_workers_terminal(
    bus: BusServer, commands: Commands, tmp_path: Path
) -> None:
    worker = await start_worker(bus, commands, tmp_path, "--no-job-logs")
    async with ProducerClient(bus.url) as client:
        _, events = await run_job(client, "chatty", {"marker": "@@here"})
    assert events[-1].event == "succeeded" and events[-1].output is None
    assert not [e for e in events if e.event == "output"]
    await wait_until(
        lambda: worker.terminal().count("@@here") == 4, 10 * unit(), "the output on the terminal"
    )
    assert not worker.logs.exists()
