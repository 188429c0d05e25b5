"""Our own clients close with code 1000: every command run against a real bus process
leaves no ``1011 (internal error)`` close and no WARNING in the bus's log."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import BusProcess, Commands, unit, wait_until

from scheduler.producer import cli as producer
from scheduler.tools import jobs, monitor, status
from scheduler.worker import cli as worker
from scheduler.worker import demo as test_scheduler

pytestmark = pytest.mark.timeout(120)


async def interrupt(commands: Commands, proc: asyncio.subprocess.Process) -> None:
    """SIGINT ``proc`` and wait until it exits 0."""
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 20 * unit()) == 0, commands.log_of(proc)


async def test_every_command_closes_with_1000(commands: Commands, tmp_path: Path) -> None:
    bus = BusProcess(commands, tmp_path / "bus.db", "--log-level", "INFO")
    await bus.start()
    bus_proc = bus.proc
    assert bus_proc is not None
    scheduler = await commands.start("scheduler.test_scheduler", "--bus", bus.url, "-s", "2")
    watcher = await commands.start("scheduler.monitor", "--bus", bus.url)
    await wait_until(
        lambda: "registered as monitor" in commands.log_of(bus_proc), 20 * unit(), "monitor"
    )
    code, _ = await commands.run(
        "scheduler.producer",
        "--bus",
        bus.url,
        "--count",
        "2",
        "-p",
        "0",
        "--runtime",
        "0.1",
        "--wait",
        timeout=30 * unit(),
    )
    assert code == 0
    code, _ = await commands.run(
        "scheduler.producer", "--bus", bus.url, "--count", "1", "--v1", "-p", "0",
        "--runtime", "0.1", timeout=30 * unit(),
    )  # fmt: skip
    assert code == 0
    code, out = await commands.run("scheduler.status", "--bus", bus.url, timeout=30 * unit())
    assert code == 0, out
    code, out = await commands.run(
        "scheduler.jobs", "--bus", bus.url, "show", "nope", timeout=30 * unit()
    )
    assert code == 1
    await interrupt(commands, watcher)
    await interrupt(commands, scheduler)
    await wait_until(
        lambda: commands.log_of(bus_proc).count("left") >= 6, 20 * unit(), "every client leaves"
    )
    log = commands.log_of(bus_proc)
    assert "1011" not in log, log
    assert " WARNING " not in log, log


@pytest.mark.parametrize("command", [producer.cli, monitor.cli, status.cli, jobs.cli, worker.cli])
def test_a_bus_url_that_is_not_websocket_is_a_one_line_usage_error(command: object) -> None:
    args = ["--bus", "http://localhost:8101"]
    if command is jobs.cli:
        args += ["show", "x"]
    if command is worker.cli:
        args += ["--tasks", "tests/sample_tasks.py"]
    result = CliRunner().invoke(command, args)  # type: ignore[arg-type]
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--bus'" in result.output
    assert "ws:// or wss://" in result.output
    assert "Traceback" not in result.output


def test_the_demo_scheduler_refuses_a_non_websocket_url_too() -> None:
    result = CliRunner().invoke(test_scheduler.cli, ["--bus", "localhost:8101"])
    assert result.exit_code == 2
    assert "Invalid value for '--bus'" in result.output
