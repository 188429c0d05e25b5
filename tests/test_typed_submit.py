"""Submitting from the task function (scheduler/producer/typed.py, attached by @task):
arguments bound against the signature before anything is sent, then a real job on a real
bus and worker, through the default clients configured from the environment."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import ROOT, Commands, free_port, unit
from sample_tasks import add, describe, explode, gather
from test_user_tasks import start_worker

from scheduler.bus.server import BusServer
from scheduler.producer import sync, typed
from scheduler.producer.client import ProducerClient
from scheduler.producer.handle import JobFailed
from scheduler.producer.sync import SyncClient

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def unreachable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the default clients at a port nobody listens on, and forget the default
    sync client before and after."""
    monkeypatch.setenv("SCHEDBUS_URL", f"ws://127.0.0.1:{free_port()}")
    sync.set_default_client(None)
    yield
    sync.set_default_client(None)


@pytest.mark.parametrize(
    ("args", "kwargs", "complaint"),
    [
        ((2,), {}, r"add.submit\(\): missing a required argument: 'b' \(it takes add\(a, b\)\)"),
        ((2, 3), {"c": 1}, "got an unexpected keyword argument 'c'"),
        ((1, 2, 3), {}, r"too many positional arguments \(it takes add\(a, b\)\)"),
        ((object(), 2), {}, "argument 'a': cannot encode object as JSON"),
    ],
)
def test_arguments_that_do_not_bind_raise_type_error_before_anything_is_sent(
    unreachable: None, args: tuple[object, ...], kwargs: dict[str, object], complaint: str
) -> None:
    with pytest.raises(TypeError, match=complaint):
        add.submit(*args, **kwargs)
    assert sync.set_default_client(None) is None  # no client was even made


async def test_async_arguments_are_bound_before_connecting(unreachable: None) -> None:
    with pytest.raises(TypeError, match="missing a required argument: 'b'"):
        await add.submit_async(1)
    with pytest.raises(TypeError, match="'items' can only go by position"):
        await describe.submit_async(1, 2, flag=True)


def test_bad_job_options_raise_value_error_naming_them(unreachable: None) -> None:
    with pytest.raises(
        ValueError, match=r"add.submit\(\): Expected `int` <= 10 - at `\$.priority`"
    ):
        add.submit(1, 2, priority=11)
    with pytest.raises(TypeError, match="client must be a SyncClient"):
        add.submit(1, 2, client=ProducerClient("ws://127.0.0.1:1"))


def test_arguments_become_positions_or_keywords_as_the_task_is_called() -> None:
    assert typed.prepare("add", add, (2,), {"b": 3, "priority": 1}).payload.args == [2, 3]
    options = typed.prepare("add", add, (), {"b": 3, "a": 2, "timeout": 5, "delay": 1.5})
    assert (options.payload.args, options.payload.timeout, options.delay) == ([2, 3], 5, 1.5)
    assert typed.prepare("describe", describe, (), {"x": 1}).payload.args == {"x": 1}
    keyword_only = typed.prepare("gather", gather, ("t",), {"results": {"a": 1}})
    assert keyword_only.payload.args == ["t", {"a": 1}]


def test_calling_a_task_still_calls_the_function() -> None:
    total: float = add(1.5, 2.5)  # mypy keeps the function's own signature and type
    assert total == 4.0
    with pytest.raises(Exception, match="here"):
        explode("here")


async def test_a_task_submits_its_own_jobs_sync_and_async(
    bus: BusServer, commands: Commands, monkeypatch: pytest.MonkeyPatch
) -> None:
    await start_worker(commands, bus)
    monkeypatch.setenv("SCHEDBUS_URL", bus.url)
    sync.set_default_client(None)

    def blocking() -> tuple[object, int]:
        job = add.submit(2, 3, priority=1)  # the default SyncClient, from SCHEDBUS_URL
        return job.result(timeout=30 * unit()), job.wait().priority

    try:
        assert await asyncio.to_thread(blocking) == (5, 1)
        async with ProducerClient(bus.url) as client:
            job = await add.submit_async(a=2, b=40, client=client)
            assert await job.result(timeout=30 * unit()) == 42
        job = await explode.submit_async("from the default client")
        with pytest.raises(JobFailed, match="from the default client"):
            await job.result(timeout=30 * unit())
    finally:
        await typed.close_default_client()
        default = sync.set_default_client(None)
        if default is not None:
            await asyncio.to_thread(default.close)


def test_importing_the_tasks_module_loads_no_network_stack() -> None:
    """A task module is imported by the fork server, whose children must stay small."""
    code = (
        "import sys, scheduler.tasks\n"
        "heavy = ('websockets', 'click', 'rich', 'scheduler.producer', 'scheduler.connect')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_sync_client_can_be_passed(unreachable: None) -> None:
    client = SyncClient(connect_timeout=0.2 * unit())
    with pytest.raises(Exception, match="could not reach"):
        add.submit(1, 2, client=client)
    assert sync.set_default_client(None) is None
