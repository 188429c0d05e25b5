"""Memory and CPU limits of a job's whole process tree: the pure decision
(scheduler.policy.limits), the executor stopping real trees past them, and a real worker
reporting the reason to the bus."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import pytest
import sample_tasks
from conftest import Commands, unit, wait_until
from test_executor import Reports, job
from test_scheduler_client import FakeBus, port_of

from scheduler.bus.server import BusServer
from scheduler.policy.limits import (
    MB,
    NO_LIMITS,
    Limits,
    Usage,
    breach,
    over_limits,
    parse_size,
)
from scheduler.tasks import TaskRegistry, load_task_modules, task
from scheduler.worker.executor import Executor

GB = 1024 * MB

# The decision.


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512M", 512 * MB),
        ("2G", 2 * GB),
        ("1.5g", 3 * GB // 2),
        ("4096", 4096),
        ("64MiB", 64 * MB),
        ("10 KB", 10 * 1024),
        (" 1T ", 1024 * GB),
        (300, 300),
    ],
)
def test_sizes_read_as_bytes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("lots", "'lots' is not a size: a number of bytes with an optional K, M, G or T"),
        ("-5M", "is not a size"),
        ("5X", "is not a size"),
        ("0", "must be at least 1 byte, not '0'"),
        (0, "must be at least 1 byte, not 0"),
    ],
)
def test_bad_sizes_are_refused_naming_the_rule(text: str | int, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_size(text)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="memory limit must be at least 1 byte, not 0"):
        Limits(memory=0)
    with pytest.raises(ValueError, match="cpu limit must be > 0 s, not -1"):
        Limits(cpu=-1)


def test_a_tasks_limits_win_field_by_field() -> None:
    scheduler = Limits(memory=GB, cpu=60)
    assert Limits(memory=MB).over(scheduler) == Limits(memory=MB, cpu=60)
    assert Limits(cpu=5).over(scheduler) == Limits(memory=GB, cpu=5)
    assert NO_LIMITS.over(NO_LIMITS) == NO_LIMITS
    assert not NO_LIMITS.any and Limits(cpu=1).any and Limits(memory=1).any


def test_a_breach_says_which_limit_and_by_how_much() -> None:
    limits = Limits(memory=512 * MB, cpu=30)
    assert breach(limits, Usage(530 * MB, 1.0)) == "memory limit 512 MB exceeded: 530 MB"
    assert breach(limits, Usage(MB, 30.24)) == "cpu limit 30 s exceeded: 30.2 s"
    assert breach(limits, Usage(600 * MB, 99)) == "memory limit 512 MB exceeded: 600 MB"
    assert breach(limits, Usage(512 * MB, 30)) is None
    assert breach(NO_LIMITS, Usage(100 * GB, 1e6)) is None


def test_a_memory_breach_never_reads_as_the_limit_itself() -> None:
    limits = Limits(memory=64 * MB)
    assert breach(limits, Usage(64 * MB + MB // 4, 0)) == ("memory limit 64 MB exceeded: 64.2 MB")
    assert breach(limits, Usage(64 * MB + 1, 0)) == (
        f"memory limit 64 MB exceeded: {(64 * MB + 1) / MB:g} MB"
    )


def test_over_limits_names_only_the_sampled_jobs_past_theirs() -> None:
    limits = {"fat": Limits(memory=MB), "ok": Limits(memory=GB), "gone": Limits(cpu=1)}
    samples = {"fat": Usage(2 * MB, 0), "ok": Usage(2 * MB, 0), "free": Usage(GB, 9)}
    assert over_limits(limits, samples) == {"fat": "memory limit 1 MB exceeded: 2 MB"}


# Real job trees under the executor.


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
async def executor_with(reports: Reports) -> AsyncIterator[Callable[..., Executor]]:
    """Builds executors with the hog and spin tasks, as declared or with ``task_limits``."""
    made: list[Executor] = []

    def make(limits: Limits = NO_LIMITS, task_limits: Limits | None = None) -> Executor:
        registry = TaskRegistry()
        for name, function, declared in (
            ("hog", sample_tasks.hog, Limits(memory=64 * MB)),
            ("spin", sample_tasks.spin, Limits(cpu=1)),
        ):
            registry.register(name, function, limits=task_limits or declared)
        executor = Executor(2, None, registry, reports, limits=limits)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        await executor.shutdown()


HOG: dict[str, object] = {"total_mb": 200, "step_mb": 8, "pause": 0.02, "hold": 30}


async def test_a_tree_past_its_memory_limit_is_stopped_and_failed(
    executor_with: Callable[..., Executor], reports: Reports
) -> None:
    executor_with().submit(job("fat", task="hog", args=HOG))
    failed = await reports.expect("failed", "fat", timeout=20)
    assert failed.error is not None
    assert failed.error.startswith("memory limit 64 MB exceeded: "), failed.error
    assert float(failed.error.split()[-2]) > 64


async def test_a_tree_past_its_cpu_limit_is_stopped_and_failed(
    executor_with: Callable[..., Executor], reports: Reports
) -> None:
    executor_with().submit(job("hot", task="spin", args=[60]))
    failed = await reports.expect("failed", "hot", timeout=20)
    assert failed.error is not None
    assert failed.error.startswith("cpu limit 1 s exceeded: "), failed.error


async def test_the_schedulers_limit_applies_to_a_task_without_its_own(
    executor_with: Callable[..., Executor], reports: Reports
) -> None:
    executor = executor_with(limits=Limits(memory=64 * MB), task_limits=Limits(cpu=600))
    executor.submit(job("fat", task="hog", args=HOG))
    failed = await reports.expect("failed", "fat", timeout=20)
    assert failed.error is not None and failed.error.startswith("memory limit 64 MB")


async def test_a_job_within_its_limits_succeeds(
    executor_with: Callable[..., Executor], reports: Reports
) -> None:
    # The task's own limit (1 GB) wins over the scheduler's 64 MB.
    executor = executor_with(limits=Limits(memory=64 * MB, cpu=600), task_limits=Limits(GB))
    executor.submit(job("fine", task="hog", args=HOG | {"hold": 0.5 * unit()}))
    done = await reports.expect("succeeded", "fine", timeout=20)
    assert done.result == 96


def test_task_declares_its_limits_and_refuses_bad_ones() -> None:
    registry = TaskRegistry()
    registry.register("hog", sample_tasks.hog)
    assert registry.spec("hog").limits == NO_LIMITS
    declared = load_task_modules(["sample_tasks"])
    assert declared.spec("hog").limits == Limits(memory=64 * MB)
    assert declared.spec("spin").limits == Limits(cpu=1)
    with pytest.raises(ValueError, match="task 'bad': 'huge' is not a size"):
        task(name="bad", memory="huge")(sample_tasks.helper)
    with pytest.raises(ValueError, match="task 'helper': cpu limit must be > 0 s, not 0"):
        task(cpu=0)(sample_tasks.helper)


# A real worker: the reason reaches the bus.


async def test_a_worker_reports_the_reason_to_the_bus(commands: Commands) -> None:
    bus = FakeBus()
    async with bus.serve() as server:
        url = f"ws://127.0.0.1:{port_of(server)}"
        await commands.start(
            "scheduler.worker", "--tasks", "tests/sample_tasks.py", "--bus", url,
            "--cpu-limit", "600", "--memory-limit", "1G",
        )  # fmt: skip
        peer = await bus.peer(timeout=15)
        await peer.register("w1")
        await peer.assign("fat", 1, task="hog", args=HOG)
        failed = await peer.expect("report", event="failed", id="fat", timeout=20)
        assert failed["error"].startswith("memory limit 64 MB exceeded: "), failed


async def test_the_reason_reaches_the_producer_through_a_real_bus(
    bus: BusServer, commands: Commands
) -> None:
    await commands.start(
        "scheduler.worker", "--tasks", "tests/sample_tasks.py", "--bus", bus.url,
        "--name", "w1",
    )  # fmt: skip
    await wait_until(lambda: "w1" in bus.scheduler_names(), 20 * unit(), "w1 registers")
    code, stdout = await commands.run(
        "scheduler.producer", "--bus", bus.url, "--task", "hog", "--args", json.dumps(HOG),
        "--count", "1", "--wait", "--json",
        timeout=60 * unit(),
    )  # fmt: skip
    [line] = stdout.splitlines()
    ended = json.loads(line)
    assert ended["state"] == "failed", ended
    assert ended["error"].startswith("memory limit 64 MB exceeded: "), ended
