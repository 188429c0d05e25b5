"""The blocking client (scheduler/producer/sync.py) against a real bus and a real worker.

The bus runs in the test's event loop, so every blocking call runs in a worker thread
(``asyncio.to_thread`` or an executor): the same as a Flask or Django thread would."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import Commands, free_port, unit
from test_user_tasks import start_worker

from scheduler.auth import create_tokens
from scheduler.bus.server import BusServer
from scheduler.producer.client import BusConnectionLost
from scheduler.producer.handle import JobFailed
from scheduler.producer.sync import SyncClient, SyncJob
from scheduler.protocol import JobPayload

pytestmark = pytest.mark.timeout(90)


async def test_eight_threads_submit_at_once_and_each_gets_its_result(
    bus: BusServer, commands: Commands
) -> None:
    await start_worker(commands, bus)
    client = SyncClient(bus.url)
    start = threading.Barrier(8)

    def submit_and_wait(n: int) -> tuple[object, str, str]:
        start.wait(timeout=10 * unit())
        job = client.submit(JobPayload(task="add", args=[n, 100]))
        return job.result(timeout=60 * unit()), job.wait().event, threading.current_thread().name

    try:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(8) as pool:
            outcomes = await asyncio.gather(
                *(loop.run_in_executor(pool, submit_and_wait, n) for n in range(8))
            )
        assert [(result, kind) for result, kind, _ in outcomes] == [
            (n + 100, "succeeded") for n in range(8)
        ]
        assert len({thread for _, _, thread in outcomes}) == 8
        # One loop thread (with its one connection) served them all.
        assert sum(t.name.startswith("schedbus-client") for t in threading.enumerate()) == 1
        assert (await asyncio.to_thread(client.stats)).bus.succeeded == 8
    finally:
        await asyncio.to_thread(client.close)
    assert not any(t.name.startswith("schedbus-client") for t in threading.enumerate())


async def test_the_sync_handle_result_failure_timeout_cancel_retry_and_a_job_by_id(
    bus: BusServer, commands: Commands
) -> None:
    await start_worker(commands, bus)

    def scenario() -> None:
        with SyncClient(bus.url) as client, SyncClient(bus.url) as other:
            bad = client.submit(JobPayload(task="explode", args=["boom"]))
            with pytest.raises(JobFailed) as failed:
                bad.result(timeout=30 * unit())
            assert failed.value.error_type == "sample_tasks.TaskFailure"
            assert failed.value.traceback and "raise TaskFailure" in failed.value.traceback
            slow = client.submit(JobPayload(task="sleep", runtime=30 * unit()))
            assert isinstance(slow, SyncJob) and slow == slow.id
            with pytest.raises(TimeoutError):
                slow.result(timeout=0.2 * unit())
            elsewhere = other.job(slow.id)
            assert elsewhere.info().id == slow.id and not elsewhere.done
            assert slow.cancel().id == slow.id
            assert elsewhere.wait(timeout=10 * unit()).event == "cancelled"
            assert client.list_jobs(["running"]).jobs == []
            listed = client.list_jobs(["failed"], final=True, task="explode")
            assert [e.id for e in listed.jobs] == [bad.id]
            assert [e.event for e in client.retry([bad.id]).jobs] == ["retried"]
            assert bad.wait(timeout=30 * unit()).attempt == 2
        with pytest.raises(BusConnectionLost, match="closed"):
            client.submit(JobPayload(task="add", args=[1, 2]))

    await asyncio.to_thread(scenario)


async def test_close_wakes_a_thread_blocked_on_a_result(bus: BusServer) -> None:
    client = SyncClient(bus.url)
    job = await asyncio.to_thread(client.submit, JobPayload(task="nobody-serves-this"))
    blocked = asyncio.ensure_future(asyncio.to_thread(job.result))
    await asyncio.to_thread(client.close)
    with pytest.raises(BusConnectionLost, match="closed"):
        await asyncio.wait_for(blocked, 10 * unit())


async def test_an_unreachable_bus_fails_the_call_and_leaves_no_thread() -> None:
    client = SyncClient(f"ws://127.0.0.1:{free_port()}", connect_timeout=0.3 * unit())
    with pytest.raises(BusConnectionLost, match="could not reach"):
        await asyncio.to_thread(client.stats)
    assert not any(t.name.startswith("schedbus-client") for t in threading.enumerate())


def test_settings_come_from_the_environment_and_the_token_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tokens = create_tokens(tmp_path / "tokens.json")
    monkeypatch.setenv("SCHEDBUS_URL", "ws://127.0.0.1:1")
    monkeypatch.setenv("SCHEDBUS_TOKEN_FILE", str(tmp_path / "tokens.json"))
    client = SyncClient()
    producer = tokens.for_role("producer")
    assert producer is not None
    assert (client.url, client._token) == ("ws://127.0.0.1:1", producer.token)
    monkeypatch.setenv("SCHEDBUS_TOKEN", "t-given")
    assert SyncClient()._token == "t-given"
    assert SyncClient("ws://127.0.0.1:2", token="t-mine")._token == "t-mine"
