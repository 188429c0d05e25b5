"""Warm mode against real slot processes: a slot process runs jobs one after another, is
replaced after N jobs, past its memory limit or when a job kills it, and each job still
gets its own exit status, measurements, log file and progress. The guarantees shared with
a process per job (tree kill, timeout, eviction, cancel, results, tracebacks) run on both
paths in test_executor.py; death with the scheduler in test_end_to_end.py and
test_containment.py."""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import Commands, unit, wait_until
from test_executor import Reports, alive, children, job
from test_job_output import events_until_final, start_worker
from test_worker import _configs

from scheduler.bus.server import BusServer
from scheduler.policy.limits import NO_LIMITS, Limits
from scheduler.policy.warm import WarmLimits, recycle
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobPayload
from scheduler.tasks import Task, TaskRegistry, progress
from scheduler.worker import cli as worker_cli
from scheduler.worker import demo
from scheduler.worker.executor import Executor
from scheduler.worker.job_output import JobLogs
from scheduler.worker.process import JobProcess
from scheduler.worker.warm import WarmPool

MIB = 1024 * 1024

_remembered: list[int] = []
_held: list[str] = []


def pid() -> int:
    """This job's process id."""
    return os.getpid()


def remember(value: int) -> list[int]:
    """Keep ``value`` in a module global; return everything kept there so far."""
    _remembered.append(value)
    return list(_remembered)


def hold(mib: int) -> int:
    """Keep ``mib`` MiB of written memory in a module global; return the pid."""
    _held.append("x" * (mib * MIB))
    return os.getpid()


def burn(mib: int, cpu_s: float) -> None:
    """Write ``mib`` MiB of memory and free it, and spin for ``cpu_s`` seconds of CPU."""
    block = "x" * (mib * MIB)
    del block
    end = time.process_time() + cpu_s
    while time.process_time() < end:
        pass


def crash(how: str) -> None:
    """Kill the process the job runs in: ``exit`` (``os._exit(7)``) or ``segfault``."""
    if how == "exit":
        os._exit(7)
    faulthandler.disable()  # pytest's: its dump of every thread would only be noise here
    ctypes.string_at(0)


def chat(marker: str) -> None:
    """Write ``marker`` to descriptors 1 and 2 and report progress with it."""
    os.write(1, f"{marker} out\n".encode())
    os.write(2, f"{marker} err\n".encode())
    progress(0.5, marker)


def replace_pipes() -> None:
    """Close every pipe descriptor of this process and open /dev/null under its number."""
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the descriptor listdir used
        if target.startswith("pipe:"):
            os.close(int(name))
            os.open(os.devnull, os.O_RDONLY)  # the lowest free number: the one just closed


def policy() -> int:
    """This job's scheduling policy."""
    return os.sched_getscheduler(0)


def length(text: str) -> int:
    """The length of ``text``."""
    return len(text)


TASKS: dict[str, Task] = {
    "length": length,
    "pid": pid,
    "remember": remember,
    "hold": hold,
    "burn": burn,
    "crash": crash,
    "chat": chat,
    "policy": policy,
    "replace_pipes": replace_pipes,
}

WarmFactory = Callable[..., Executor]


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
async def make_warm(reports: Reports) -> AsyncIterator[WarmFactory]:
    """Builds warm executors of one slot reporting to ``reports``; all shut down at the end."""
    made: list[Executor] = []

    def make(
        limits: WarmLimits, logs: JobLogs | None = None, job_limits: Limits = NO_LIMITS
    ) -> Executor:
        executor = Executor(
            1,
            10 * unit(),
            TaskRegistry(TASKS),
            reports,
            launcher=WarmPool(limits),
            logs=logs,
            limits=job_limits,
        )
        made.append(executor)
        return executor

    yield make
    for executor in made:
        await executor.shutdown()


async def test_a_slot_process_is_replaced_after_n_jobs(
    make_warm: WarmFactory, reports: Reports
) -> None:
    executor = make_warm(WarmLimits(2))
    pids: list[int] = []
    for n in range(5):
        executor.submit(job(f"j{n}", task="pid", args=[]))
        result = (await reports.expect("succeeded", f"j{n}")).result
        assert isinstance(result, int)
        pids.append(result)
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert len(set(pids)) == 3
    # Retired slot processes exit once told; the idle one is kept.
    await wait_until(
        lambda: [p.pid for p in children()] == [pids[4]], 5 * unit(), "retired slots to exit"
    )


async def test_arguments_larger_than_a_socket_buffer_reach_the_slot_process_whole(
    make_warm: WarmFactory, reports: Reports
) -> None:
    executor = make_warm(WarmLimits(10))
    for n, size in enumerate([900_000, 3]):
        executor.submit(job(f"a{n}", task="length", args=["x" * size]))
        assert (await reports.expect("succeeded", f"a{n}")).result == size


async def test_an_idle_slot_process_that_died_is_replaced_for_the_next_job(
    make_warm: WarmFactory, reports: Reports
) -> None:
    executor = make_warm(WarmLimits(10))
    executor.submit(job("first", task="pid", args=[]))
    first = (await reports.expect("succeeded", "first")).result
    assert isinstance(first, int)
    os.kill(first, signal.SIGKILL)
    # Dead but not yet reaped (the loop has not run): the job is sent to it and refused.
    os.waitid(os.P_PID, first, os.WEXITED | os.WNOWAIT)
    executor.submit(job("second", task="pid", args=[]))
    second = await reports.expect("succeeded", "second")
    assert second.result != first
    assert [r.event for r in reports.seen if r.id == "second"] == ["started", "succeeded"]


async def test_module_state_survives_between_jobs_of_a_slot(
    make_warm: WarmFactory, reports: Reports
) -> None:
    executor = make_warm(WarmLimits(2))
    for n in range(3):
        executor.submit(job(f"r{n}", task="remember", args=[n]))
        await reports.expect("succeeded", f"r{n}")
    results = [r.result for r in reports.seen if r.event == "succeeded"]
    # The documented trade-off: the second job sees the first one's global; the third
    # runs in a fresh process, which starts from the scheduler's state again.
    assert results == [[0], [0, 1], [2]]


async def test_a_slot_process_runs_its_jobs_as_batch_work(
    make_warm: WarmFactory, reports: Reports
) -> None:
    executor = make_warm(WarmLimits(2))
    executor.submit(job("batch", task="policy", args=[]))
    assert (await reports.expect("succeeded", "batch")).result == os.SCHED_BATCH


async def test_a_slot_process_past_its_memory_limit_is_replaced(
    make_warm: WarmFactory, reports: Reports
) -> None:
    own_rss = _rss_of_this_process()
    executor = make_warm(WarmLimits(100, max_rss=own_rss + 48 * MIB))
    pids = []
    for n, mib in enumerate([0, 0, 96, 0]):
        executor.submit(job(f"h{n}", task="hold", args=[mib]))
        pids.append((await reports.expect("succeeded", f"h{n}")).result)
    assert pids[0] == pids[1] == pids[2] != pids[3]


async def test_cpu_and_peak_memory_are_each_jobs_own(
    make_warm: WarmFactory, reports: Reports
) -> None:
    executor = make_warm(WarmLimits(10))
    executor.submit(job("heavy", task="burn", args=[64, 0.3]))
    heavy = await reports.expect("succeeded", "heavy")
    executor.submit(job("light", task="burn", args=[0, 0]))
    light = await reports.expect("succeeded", "light")
    assert heavy.cpu_s is not None and heavy.cpu_s >= 0.3
    assert light.cpu_s is not None and light.cpu_s < 0.1
    assert heavy.max_rss_kb is not None and light.max_rss_kb is not None
    assert heavy.max_rss_kb - light.max_rss_kb >= 48 * 1024


async def test_a_cpu_limit_counts_only_the_jobs_own_cpu_in_a_shared_slot(
    make_warm: WarmFactory, reports: Reports
) -> None:
    executor = make_warm(WarmLimits(10), job_limits=Limits(cpu=0.5))
    for n in range(3):
        executor.submit(job(f"c{n}", task="burn", args=[0, 0.3]))
        await reports.expect("succeeded", f"c{n}", timeout=10)
    executor.submit(job("over", task="burn", args=[0, 5]))
    failed = await reports.expect("failed", "over", timeout=20)
    assert failed.error is not None and failed.error.startswith("cpu limit 0.5 s exceeded")


@pytest.mark.parametrize(("how", "exit_code"), [("exit", 7), ("segfault", -11)])
async def test_a_job_that_kills_its_slot_process_fails_and_a_fresh_one_takes_the_slot(
    make_warm: WarmFactory, reports: Reports, how: str, exit_code: int
) -> None:
    executor = make_warm(WarmLimits(10))
    executor.submit(job("before", task="pid", args=[]))
    before = (await reports.expect("succeeded", "before")).result
    executor.submit(job("crash", task="crash", args=[how]))
    failed = await reports.expect("failed", "crash")
    assert failed.exit_code == exit_code
    executor.submit(job("after", task="pid", args=[]))
    after = (await reports.expect("succeeded", "after")).result
    assert isinstance(before, int) and after != before and not alive(before)


async def test_a_job_that_replaces_the_slots_result_pipe_leaves_the_next_job_a_fresh_slot(
    make_warm: WarmFactory, reports: Reports
) -> None:
    executor = make_warm(WarmLimits(10))
    executor.submit(job("before", task="pid", args=[]))
    before = (await reports.expect("succeeded", "before")).result
    executor.submit(job("vandal", task="replace_pipes", args=[]))
    await reports.expect("succeeded", "vandal")
    executor.submit(job("after", task="length", args=["four"]))
    assert (await reports.expect("succeeded", "after")).result == 4
    executor.submit(job("pid", task="pid", args=[]))
    after = (await reports.expect("succeeded", "pid")).result
    assert isinstance(before, int) and after != before and not alive(before)


async def test_each_job_has_its_own_log_and_progress_in_a_shared_slot(
    make_warm: WarmFactory, reports: Reports, tmp_path: Path
) -> None:
    executor = make_warm(WarmLimits(10), logs=JobLogs(tmp_path, "w"))
    for marker in ("first", "second"):
        executor.submit(job(marker, task="chat", args=[marker]))
        done = await reports.expect("succeeded", marker)
        assert done.output == f"{marker} out\n{marker} err\n"
        shown = await reports.expect("progress", marker)
        assert (shown.progress, shown.message) == (0.5, marker)
    logs = sorted(p.name for p in (tmp_path / "w").iterdir())
    assert logs == ["first.1.log", "second.1.log"]
    assert (tmp_path / "w" / "second.1.log").read_text() == "second out\nsecond err\n"


async def test_a_real_warm_worker_gives_each_job_its_own_output_and_progress(
    bus: BusServer, commands: Commands, tmp_path: Path
) -> None:
    worker = await start_worker(bus, commands, tmp_path, "--warm", "5", "-s", "1")
    async with ProducerClient(bus.url) as client:
        finals = []
        for marker in ("@@one", "@@two"):
            job_id = await client.submit(JobPayload(task="chatty", args={"marker": marker}))
            events = await events_until_final(client, job_id)
            finals.append(events[-1])
            log_file = worker.logs / "w" / f"{job_id}.1.log"
            assert log_file.read_text() == events[-1].output
        job_id = await client.submit(JobPayload(task="burst", args={"count": 50}))
        events = await events_until_final(client, job_id)
    for final, marker in zip(finals, ("@@one", "@@two"), strict=True):
        assert final.event == "succeeded" and final.output is not None
        assert {line.split()[0] for line in final.output.splitlines()} == {marker}
        assert len(final.output.splitlines()) == 4
    shown = [(e.progress, e.message) for e in events if e.event == "progress"]
    assert shown[-1] == (1.0, "last") and events[-1].event == "succeeded"
    assert "@@" not in worker.terminal()


async def test_a_slot_process_that_cannot_be_forked_fails_its_job_and_frees_the_slot(
    make_warm: WarmFactory, reports: Reports, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(self: JobProcess) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    executor = make_warm(WarmLimits(10))
    monkeypatch.setattr(JobProcess, "start", fail)
    executor.submit(job("first", task="pid", args=[]))
    monkeypatch.undo()
    executor.submit(job("second", task="pid", args=[]))
    failed = await reports.expect("failed", "first")
    assert failed.error == (
        "could not start the job process: [Errno 11] Resource temporarily unavailable"
    )
    await reports.expect("succeeded", "second")


async def test_shutdown_stops_the_idle_slot_processes(
    make_warm: WarmFactory, reports: Reports
) -> None:
    executor = make_warm(WarmLimits(10))
    executor.submit(job("a", task="pid", args=[]))
    await reports.expect("succeeded", "a")
    assert len(children()) == 1
    await executor.shutdown()
    assert children() == []


def test_a_slot_is_recycled_after_its_jobs_or_past_its_memory() -> None:
    assert not recycle(WarmLimits(3), 2, 10**12)
    assert recycle(WarmLimits(3), 3, 0)
    assert not recycle(WarmLimits(3, max_rss=100), 1, 100)
    assert recycle(WarmLimits(3, max_rss=100), 1, 101)


def test_warm_limits_name_the_field_they_refuse() -> None:
    with pytest.raises(ValueError, match="warm max_jobs must be >= 1, not 0"):
        WarmLimits(0)
    with pytest.raises(ValueError, match="warm max_rss must be >= 1 byte, not 0"):
        WarmLimits(1, max_rss=0)


def _rss_of_this_process() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_the_commands_pass_warm_mode_to_the_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    configs = _configs(monkeypatch)
    runner = CliRunner()
    assert runner.invoke(worker_cli.cli, ["--tasks", "sample_tasks"]).exit_code == 0
    warm = ["--tasks", "sample_tasks", "--warm", "50", "--warm-max-rss", "200M"]
    assert runner.invoke(worker_cli.cli, warm).exit_code == 0
    assert runner.invoke(demo.cli, ["--warm", "7"]).exit_code == 0
    assert [c.warm for c in configs] == [
        None,
        WarmLimits(50, max_rss=200 * MIB),
        WarmLimits(7),
    ]
    assert isinstance(configs[1].launcher(TaskRegistry()), WarmPool)
    assert configs[0].warm is None and configs[0].fork_server  # a fork server, no warm pool


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--warm", "0"], "Invalid value for '--warm'"),
        (["--warm", "5", "--warm-max-rss", "lots"], "'lots' is not a size"),
        (["--warm-max-rss", "200M"], "--warm-max-rss needs --warm N"),
    ],
)
def test_bad_warm_options_are_refused_clearly(
    monkeypatch: pytest.MonkeyPatch, args: list[str], complaint: str
) -> None:
    _configs(monkeypatch)
    result = CliRunner().invoke(worker_cli.cli, ["--tasks", "sample_tasks", *args])
    assert result.exit_code == 2
    assert complaint in result.output
