"""Job handles (scheduler/producer/handle.py): what a JobFailed carries and how a watch
orders events, without sockets; then against a real bus and a real worker running
``tests/sample_tasks.py``: results, failures with their traceback, timeouts, several
waiters on one job, and a handle on a job another client submitted."""

from __future__ import annotations

import asyncio
import copy
import pickle
from pathlib import Path

import pytest
from conftest import BusProcess, Commands, unit
from test_user_tasks import SAMPLE_TASKS, start_worker

from scheduler.bus.server import BusServer
from scheduler.producer.client import BusConnectionLost, ProducerClient
from scheduler.producer.handle import Job, JobFailed, JobWatch, UnknownJob
from scheduler.protocol import JobEvent, JobPayload
from scheduler.protocol_types import FINAL_EVENTS, EventKind, JobState

pytestmark = pytest.mark.timeout(90)


def event(kind: EventKind, time: float, state: JobState = "running", **fields: object) -> JobEvent:
    return JobEvent(event=kind, id="j1", priority=5, state=state, time=time, **fields)  # type: ignore[arg-type]


def test_job_failed_carries_the_exception_type_message_and_traceback() -> None:
    final = event(
        "failed",
        9.0,
        "failed",
        error="mypkg.BadInput: row 3: no date",
        traceback='Traceback (most recent call last):\n  File "t.py"...\nmypkg.BadInput: row 3',
    )
    failed = JobFailed(final)
    assert (failed.job_id, failed.state, failed.error_type) == ("j1", "failed", "mypkg.BadInput")
    assert failed.message == "row 3: no date"
    assert failed.traceback == final.traceback and failed.event is final
    assert str(failed) == "job j1 failed: mypkg.BadInput: row 3: no date"
    assert failed.__notes__ == [f"The job's traceback:\n{final.traceback}"]


def test_job_failed_without_an_exception_says_what_ended_the_job() -> None:
    timed_out = JobFailed(event("timed_out", 9.0, "timed_out", error="timed out after 1 s"))
    assert (timed_out.error_type, timed_out.message) == (None, "timed out after 1 s")
    assert not hasattr(timed_out, "__notes__")
    cancelled = JobFailed(event("cancelled", 9.0, "cancelled"))
    assert (cancelled.error_type, cancelled.message) == (None, "the job was cancelled")
    assert str(cancelled) == "job j1 cancelled: the job was cancelled"
    dead = JobFailed(event("dead", 9.0, "dead", error="no more attempts"))
    assert dead.message == "no more attempts"
    assert JobFailed(event("dead", 9.0, "dead")).message == "the job ended dead"


async def test_a_watch_keeps_live_events_in_order_and_drops_stale_snapshots() -> None:
    watch = JobWatch("j1")
    watch.add(event("accepted", 1.0, "queued"), snapshot=True)
    watch.add(event("started", 3.0))
    watch.add(event("started", 3.0))  # the same event again (a re-watch): once
    watch.add(event("assigned", 2.0, "assigned"), snapshot=True)  # an older reply: dropped
    assert [e.event for e in watch.events] == ["accepted", "started"]
    reader = asyncio.create_task(watch.final())
    watch.add(event("succeeded", 4.0, "succeeded", result=7))
    assert (await reader).result == 7
    assert await watch.next_after(0) == watch.events[0]


async def test_a_closed_watch_fails_its_waiters_but_keeps_a_final_event() -> None:
    watch = JobWatch("j1")
    waiter = asyncio.create_task(watch.final())
    await asyncio.sleep(0)
    watch.close("the client was closed")
    with pytest.raises(BusConnectionLost, match="the client was closed"):
        await waiter
    done = JobWatch("j2")
    done.add(event("succeeded", 1.0, "succeeded"))
    done.close("the client was closed")
    assert (await done.final()).event == "succeeded"


async def test_a_handle_is_its_id_and_pickles_as_it(bus: BusServer) -> None:
    async with ProducerClient(bus.url) as client:
        job = await client.submit(JobPayload(task="nobody-serves-this"))
        assert isinstance(job, Job) and isinstance(job, str)
        assert job == job.id and type(job.id) is str and {job.id: 1}[job] == 1
        assert repr(job) == f"Job({job.id!r})"
        assert type(pickle.loads(pickle.dumps(job))) is str and copy.copy(job) == job
        # A handle goes wherever an id does, e.g. into another job's dependencies.
        after = await client.submit(JobPayload(task="nobody-serves-this", depends_on=[job]))
        assert (await after.info()).state == "blocked"
        assert (await job.cancel()).state == "cancelled"
        assert (await job.wait(timeout=5 * unit())).event == "cancelled"
        assert job.done and job.latest is not None
        with pytest.raises(JobFailed) as failed:
            await job.result(timeout=5 * unit())
        assert failed.value.state == "cancelled"
        # The dependent job is skipped: its handle hears it too.
        with pytest.raises(JobFailed, match="skipped"):
            await after.result(timeout=5 * unit())
        with pytest.raises(UnknownJob, match="never-submitted"):
            await client.job("never-submitted")


async def test_result_of_a_task_and_of_a_failed_task_with_its_traceback(
    bus: BusServer, commands: Commands
) -> None:
    await start_worker(commands, bus)
    async with ProducerClient(bus.url) as client:
        good = await client.submit(JobPayload(task="add", args=[2, 3]))
        bad = await client.submit(JobPayload(task="explode", args=["no such file: x.csv"]))
        assert await good.result(timeout=30 * unit()) == 5
        with pytest.raises(JobFailed) as caught:
            await bad.result(timeout=30 * unit())
    failed = caught.value
    assert (failed.job_id, failed.state) == (bad.id, "failed")
    assert failed.error_type == "sample_tasks.TaskFailure"
    assert failed.message == "no such file: x.csv"
    assert failed.traceback is not None and "raise TaskFailure(message)" in failed.traceback


async def test_after_a_retry_a_handle_waits_for_the_jobs_new_end(
    bus: BusServer, commands: Commands
) -> None:
    await start_worker(commands, bus)
    async with ProducerClient(bus.url) as client:
        job = await client.submit(JobPayload(task="explode", args=["disk full"]))
        assert (await job.wait(timeout=30 * unit())).attempt == 1
        assert job.done
        reply = await client.retry([job.id])
        assert [e.event for e in reply.jobs] == ["retried"]
        assert not job.done  # at once: not only once the live event has come
        again = await job.wait(timeout=30 * unit())
    assert (again.event, again.attempt) == ("failed", 2)


async def test_waiting_past_the_timeout_raises_timeout_error_and_the_job_goes_on(
    bus: BusServer, commands: Commands
) -> None:
    await start_worker(commands, bus)
    async with ProducerClient(bus.url) as client:
        job = await client.submit(JobPayload(task="sleep", runtime=30 * unit()))
        with pytest.raises(TimeoutError):
            await job.result(timeout=0.2 * unit())
        assert (await job.info()).event not in FINAL_EVENTS  # the job goes on
        await job.cancel()
        assert (await job.wait(timeout=10 * unit())).event == "cancelled"


async def test_every_waiter_on_a_job_sees_every_event(bus: BusServer, commands: Commands) -> None:
    """Two events() iterators, two handles on the same job and two iterators of one
    handle: before, they shared one queue and each saw only part of the events."""
    await start_worker(commands, bus)
    async with ProducerClient(bus.url) as client:

        async def stream() -> list[str]:
            kinds: list[str] = []
            async for seen in client.events():
                kinds.append(seen.event)
                if seen.event == "succeeded":
                    return kinds
            raise AssertionError("the events ended")

        async def of_handle(job: Job) -> list[str]:
            return [seen.event async for seen in job.events()]

        streams = [asyncio.create_task(stream()) for _ in range(2)]
        await asyncio.sleep(0)  # both iterators are open before the job is submitted
        job = await client.submit(JobPayload(task="add", args=[1, 2]))
        again = await client.job(job.id)
        async with asyncio.timeout(30 * unit()):
            seen = await asyncio.gather(*streams, of_handle(job), of_handle(job))
            assert await again.result() == 3 and await job.result() == 3
    expected = ["accepted", "assigned", "started", "succeeded"]
    assert seen == [expected] * 4
    assert [e.event for e in again._watch.events] == expected  # one watch for both


async def test_a_handle_on_a_job_another_client_submitted_waits_for_its_result(
    bus: BusServer, commands: Commands
) -> None:
    await start_worker(commands, bus)
    async with ProducerClient(bus.url) as submitter, ProducerClient(bus.url) as other:
        job_id = (await submitter.submit(JobPayload(task="nap", args=[0.3 * unit()]))).id
        handle = await other.job(job_id)
        assert await handle.result(timeout=30 * unit()) is None
        # A handle made after the job ended gets its final state from the bus.
        late = await other.job(job_id)
        assert late.done and (await late.wait()).event == "succeeded"
        assert (await late.info()).state == "succeeded"


async def test_a_closed_client_fails_its_waiters(bus: BusServer) -> None:
    client = ProducerClient(bus.url)
    await client.connect()
    job = await client.submit(JobPayload(task="nobody-serves-this"))
    waiter = asyncio.create_task(job.result())
    await asyncio.sleep(0)
    await client.close()
    with pytest.raises(BusConnectionLost, match="closed"):
        await waiter
    with pytest.raises(BusConnectionLost):
        await job.info()


async def test_handles_wait_across_a_bus_restart(commands: Commands, tmp_path: Path) -> None:
    """The client re-watches its jobs after a reconnect, so a handle still hears the end;
    so does a handle taken on another client's job."""
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    token = bus.token("producer")
    async with (
        ProducerClient(bus.url, token=token) as client,
        ProducerClient(bus.url, token=token) as other,
    ):
        job = await client.submit(JobPayload(task="add", args=[20, 22]))
        elsewhere = await other.job(job.id)
        await bus.kill()
        await bus.start()
        await commands.start("scheduler.worker", "--bus", bus.url, "--tasks", SAMPLE_TASKS)
        async with asyncio.timeout(60 * unit()):
            assert await job.result() == 42
            assert await elsewhere.result() == 42


async def test_two_events_iterators_each_see_every_event(
    bus: BusServer, commands: Commands
) -> None:
    """Before, the client had one queue: two iterators took turns at its events."""
    await start_worker(commands, bus)
    async with ProducerClient(bus.url) as client:

        async def stream() -> list[str]:
            kinds: list[str] = []
            async for seen in client.events():
                kinds.append(seen.event)
                if seen.event == "succeeded":
                    return kinds
            raise AssertionError("the events ended")

        streams = [asyncio.create_task(stream()) for _ in range(2)]
        await asyncio.sleep(0)
        await client.submit(JobPayload(task="add", args=[1, 2]))
        seen = await asyncio.wait_for(asyncio.gather(*streams), 30 * unit())
    assert seen == [["accepted", "assigned", "started", "succeeded"]] * 2
