"""``python -m scheduler.test_scheduler``: options and a real run. Its job log lines and
option set are shared with the worker command (tests/test_worker.py)."""

from __future__ import annotations

import asyncio
import signal

import pytest
from click.testing import CliRunner
from conftest import Commands, jobs_of, unit, wait_until
from test_scheduler_client import FakeBus

from scheduler.worker import demo as test_scheduler


def test_help_explains_every_option() -> None:
    result = CliRunner().invoke(test_scheduler.cli, ["--help"])
    assert result.exit_code == 0
    for option in ("--size", "--timeout", "--debug", "--bus", "--name", "--token"):
        assert option in result.output
    assert "SCHEDBUS_URL" in result.output and "SCHEDBUS_TOKEN" in result.output


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["-s", "0"], "Invalid value for '-s' / '--size'"),
        (["--size", "many"], "'many' is not a valid integer"),
        (["-t", "0"], "Invalid value for '-t' / '--timeout'"),
        (["-t", "-3"], "Invalid value for '-t' / '--timeout'"),
        (["--bus", "http://localhost:8101"], "is not a ws:// or wss:// URL"),
        (["--name", "x" * 201], "must be at most 200 characters"),
        (["--frobnicate"], "No such option"),
    ],
)
def test_bad_options_are_refused_clearly(args: list[str], complaint: str) -> None:
    result = CliRunner().invoke(test_scheduler.cli, args)
    assert result.exit_code == 2
    assert complaint in result.output


async def test_runs_a_job_and_exits_0_on_sigterm_leaving_no_child(commands: Commands) -> None:
    bus = FakeBus()
    async with bus.serve() as server:
        port = next(iter(server.sockets)).getsockname()[1]
        proc = await commands.start(
            "scheduler.test_scheduler", "--bus", f"ws://127.0.0.1:{port}", "-s", "2", "-t", "30"
        )
        peer = await bus.peer(timeout=15)
        register = await peer.register("sched-1")
        assert (register["size"], register["tasks"]) == (2, ["sleep"])
        await peer.assign("quick0123", runtime=0.05 * unit(), priority=4)
        await peer.expect("report", event="succeeded", id="quick0123")
        await peer.assign("long", runtime=60)
        await peer.expect("report", event="started", id="long")
        [job] = jobs_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10 * unit()) == 0
        await asyncio.wait_for(peer.closed.wait(), 5 * unit())
        assert peer.close_code == 1000
    await wait_until(lambda: not job.is_running(), 5 * unit(), "the job process to be gone")
    log = commands.log_of(proc)
    assert "registered with" in log
    assert "job quick0123 p4 started" in log and "job quick0123 p4 succeeded in" in log


async def test_quiet_logs_only_the_jobs_that_did_not_succeed(commands: Commands) -> None:
    bus = FakeBus()
    async with bus.serve() as server:
        port = next(iter(server.sockets)).getsockname()[1]
        proc = await commands.start(
            "scheduler.test_scheduler", "--bus", f"ws://127.0.0.1:{port}", "-q", "-t", "30"
        )
        peer = await bus.peer(timeout=15)
        await peer.register("sched-q")
        await peer.assign("quick0123", runtime=0.05 * unit(), priority=4)
        await peer.expect("report", event="succeeded", id="quick0123")
        await peer.assign("slow4567", runtime=60, priority=3, timeout=0.2 * unit())
        await peer.expect("report", event="timed_out", id="slow4567")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10 * unit()) == 0
    log = commands.log_of(proc)
    assert "registered with" in log and "quick0123" not in log
    assert "job slow4567 p3 timed out after" in log
