"""``python -m scheduler.worker``: options, task module errors, job log lines, and a real
run serving a task module given by path."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import msgspec
import pytest
from attempt_log_tasks import LOG_ENV
from click.testing import CliRunner
from conftest import Commands, unit
from test_scheduler_client import FakeBus, port_of

from scheduler.policy.limits import Limits
from scheduler.protocol import Assignment, Report
from scheduler.worker import cli as worker
from scheduler.worker import demo as test_scheduler


def test_help_explains_every_option() -> None:
    result = CliRunner().invoke(worker.cli, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--tasks",
        "--log-jobs",
        "--size",
        "--timeout",
        "--memory-limit",
        "--cpu-limit",
        "--debug",
        "--bus",
        "--name",
        "--token",
        "--token-file",
        "--cafile",
    ):
        assert option in result.output
    for text in ("MODULE[,MODULE]", "@scheduler.tasks.task", "SCHEDBUS_JOB_ID", "SCHEDBUS_URL"):
        assert text in result.output


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ([], "Missing option '--tasks'"),
        (["--tasks", " , "], "name at least one task module"),
        (["--tasks", "no_such_module_here"], "task module 'no_such_module_here': cannot import"),
        (["--tasks", "sample_tasks,json"], "task module 'json': no task declared"),
        (["--tasks", "missing/tasks.py"], "task module 'missing/tasks.py': cannot import"),
        (["--tasks", "sample_tasks", "-s", "0"], "Invalid value for '-s' / '--size'"),
    ],
)
def test_bad_task_modules_and_options_are_refused_clearly(args: list[str], complaint: str) -> None:
    result = CliRunner().invoke(worker.cli, args)
    assert result.exit_code == 2
    assert complaint in result.output


def test_each_job_step_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "scheduler.worker")
    job = Assignment(id="0123456789abcdef" * 2, attempt=1, priority=3, runtime=1.5)
    steps = [
        Report("started", job.id, 1),
        Report("evicted", job.id, 1, evictions=2, wall_s=0.25),
        Report("succeeded", job.id, 1, exit_code=0, wall_s=1.5, cpu_s=0.01, max_rss_kb=2048),
        Report("timed_out", job.id, 1, wall_s=10.0),
        Report("failed", job.id, 1, exit_code=1, error="exit code 1", wall_s=0.5),
        Report("cancelled", job.id, 1, wall_s=0.75),
        Report("revoked", job.id, 1),
    ]
    for report in steps:
        worker.log_report(report, job)
    worker.log_report(Report("started", job.id, 2), msgspec.structs.replace(job, runtime=None))
    assert caplog.messages == [
        "job 0123456789ab p3 started (task sleep, runtime 1.5 s, attempt 1)",
        "job 0123456789ab p3 evicted after 0.25 s, back to the bus (eviction 2)",
        "job 0123456789ab p3 succeeded in 1.50 s (cpu 0.01 s, rss 2.0 MB)",
        "job 0123456789ab p3 timed out after 10.00 s",
        "job 0123456789ab p3 failed after 0.50 s: exit code 1",
        "job 0123456789ab p3 cancelled after 0.75 s",
        "job 0123456789ab p3 left for another scheduler before it started",
        "job 0123456789ab p3 started (task sleep, attempt 2)",
    ]


def test_a_job_failed_by_an_exception_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "scheduler.worker")
    job = Assignment(id="0123456789abcdef" * 2, attempt=1, priority=3, task="explode")
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad\n'
    report = Report("failed", job.id, 1, exit_code=1, error="ValueError: bad", traceback=trace)
    worker.log_unusual_report(report, job)
    assert caplog.messages == [
        f"job 0123456789ab p3 failed after 0.00 s: ValueError: bad\n{trace}"[:-1]
    ]


def test_without_log_jobs_only_unusual_steps_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "scheduler.worker")
    job = Assignment(id="0123456789abcdef", attempt=1, priority=3, runtime=1.5)
    for report in (
        Report("started", job.id, 1),
        Report("succeeded", job.id, 1, exit_code=0, wall_s=1.5, cpu_s=0.01, max_rss_kb=2048),
        Report("evicted", job.id, 1, evictions=1, wall_s=0.25),
        Report("timed_out", job.id, 1, wall_s=10.0),
        Report("failed", job.id, 1, exit_code=1, error="exit code 1", wall_s=0.5),
        Report("cancelled", job.id, 1, wall_s=0.75),
        Report("revoked", job.id, 1),
    ):
        worker.log_unusual_report(report, job)
    assert [message.split()[3] for message in caplog.messages] == [
        "evicted",
        "timed",
        "failed",
        "cancelled",
    ]


def test_job_lines_are_skipped_below_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "scheduler.worker")
    job = Assignment(id="0123456789abcdef", attempt=1, priority=3, runtime=1.5)
    worker.log_report(Report("started", job.id, 1), job)
    assert caplog.messages == []


@pytest.mark.parametrize(
    ("args", "observer"),
    [
        ([], worker.log_unusual_report),
        (["--log-jobs"], worker.log_report),
        (["-d"], worker.log_report),
    ],
)
def test_log_jobs_chooses_the_job_lines(
    args: list[str], observer: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen: list[object] = []

    class Client:
        def __init__(self, config: object, tasks: object, on_report: object) -> None:
            chosen.append(on_report)

        async def run(self) -> None:
            pass

    def run_now(main: Coroutine[Any, Any, None]) -> None:
        asyncio.run(main)

    monkeypatch.setattr(worker, "SchedulerClient", Client)
    # It would make this test process a subreaper that kills its other children.
    monkeypatch.setattr(worker, "contain_orphans", lambda: None)
    monkeypatch.setattr(worker, "run_until_signalled", run_now)
    # run_scheduler sets up logging for its process: leave this one's as it was.
    monkeypatch.setattr(worker, "configure_logging", lambda level: None)
    for switch in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, switch, getattr(logging, switch))
    result = CliRunner().invoke(worker.cli, ["--tasks", "sample_tasks", *args])
    assert result.exit_code == 0, result.output
    assert chosen == [observer]


async def test_serves_a_task_module_given_by_path_and_exits_0_on_sigterm(
    commands: Commands, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = tmp_path / "attempts.log"
    monkeypatch.setenv(LOG_ENV, str(attempts))
    bus = FakeBus()
    async with bus.serve() as server:
        proc = await commands.start(
            "scheduler.worker",
            "--tasks",
            "tests/attempt_log_tasks.py",
            "--bus",
            f"ws://127.0.0.1:{port_of(server)}",
            "--name",
            "w1",
            "-s",
            "1",
            "--log-jobs",
        )
        peer = await bus.peer(timeout=15)
        register = await peer.register("w1")
        assert (register["name"], register["tasks"]) == ("w1", ["recorded_sleep", "sleep"])
        await peer.assign("rec-1", attempt=2, task="recorded_sleep", runtime=0.05 * unit())
        done = await peer.expect("report", event="succeeded", id="rec-1")
        assert done["attempt"] == 2
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10 * unit()) == 0
        await asyncio.wait_for(peer.closed.wait(), 5 * unit())
        assert peer.close_code == 1000
    start, end = (line.split() for line in attempts.read_text().splitlines())
    assert start[:3] == ["start", "rec-1", "2"] and end[:3] == ["end", "rec-1", "2"]
    assert start[4] == end[4] != str(proc.pid)  # the job's own process
    assert float(end[3]) - float(start[3]) >= 0.05 * unit()
    log = commands.log_of(proc)
    assert "serving tasks: recorded_sleep, sleep" in log
    assert "job rec-1 p5 started (task recorded_sleep" in log


def _configs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Run the command's scheduler in this process with a stand-in client; return the
    configs it is built with."""
    configs: list[Any] = []

    class Client:
        def __init__(self, config: object, tasks: object, on_report: object) -> None:
            configs.append(config)

        async def run(self) -> None:
            pass

    def run_now(main: Coroutine[Any, Any, None]) -> None:
        asyncio.run(main)

    monkeypatch.setattr(worker, "SchedulerClient", Client)
    monkeypatch.setattr(worker, "run_until_signalled", run_now)
    monkeypatch.setattr(worker, "contain_orphans", lambda: None)
    monkeypatch.setattr(worker, "configure_logging", lambda level: None)
    for switch in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, switch, getattr(logging, switch))
    return configs


def test_worker_sets_no_timeout_unless_told_and_passes_its_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configs = _configs(monkeypatch)
    runner = CliRunner()
    assert runner.invoke(worker.cli, ["--tasks", "sample_tasks"]).exit_code == 0
    limited = ["--tasks", "sample_tasks", "-t", "30", "--memory-limit", "512M"]
    assert runner.invoke(worker.cli, [*limited, "--cpu-limit", "2.5"]).exit_code == 0
    assert [(c.timeout, c.limits) for c in configs] == [
        (None, Limits()),
        (30.0, Limits(memory=512 * 1024 * 1024, cpu=2.5)),
    ]


def test_the_demo_keeps_its_10_s_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    configs = _configs(monkeypatch)
    assert CliRunner().invoke(test_scheduler.cli, []).exit_code == 0
    assert configs[0].timeout == 10.0


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--memory-limit", "lots"], "'lots' is not a size: a number of bytes with an optional"),
        (["--memory-limit", "0"], "must be at least 1 byte"),
        (["--cpu-limit", "0"], "Invalid value for '--cpu-limit'"),
        (["-t", "0"], "Invalid value for '-t' / '--timeout'"),
    ],
)
def test_bad_limits_are_refused_clearly(args: list[str], complaint: str) -> None:
    result = CliRunner().invoke(worker.cli, ["--tasks", "sample_tasks", *args])
    assert result.exit_code == 2
    assert complaint in result.output


BROKEN_MODULE = """\
from scheduler.tasks import task

def settings():
    return {}["missing"]

SETTINGS = settings()
"""


def test_an_import_error_shows_where_it_was_raised(tmp_path: Path) -> None:
    module = tmp_path / "broken_tasks.py"
    module.write_text(BROKEN_MODULE)
    result = CliRunner().invoke(worker.cli, ["--tasks", str(module)])
    assert result.exit_code == 2
    assert "cannot import it: KeyError: 'missing'" in result.output
    assert f'File "{module}", line 6, in <module>\n    SETTINGS = settings()' in result.output
    assert f'File "{module}", line 4, in settings\n    return {{}}["missing"]' in result.output
    assert "importlib" not in result.output and "scheduler/tasks.py" not in result.output


def test_a_syntax_error_shows_the_line(tmp_path: Path) -> None:
    module = tmp_path / "typo_tasks.py"
    module.write_text("x = 1\ndef f(:\n    pass\n")
    result = CliRunner().invoke(worker.cli, ["--tasks", str(module)])
    assert result.exit_code == 2
    assert "SyntaxError" in result.output
    assert f'File "{module}", line 2\n    def f(:' in result.output


async def test_a_real_worker_names_where_its_task_module_failed(
    commands: Commands, tmp_path: Path
) -> None:
    module = tmp_path / "broken_tasks.py"
    module.write_text(BROKEN_MODULE)
    proc = await commands.start("scheduler.worker", "--tasks", str(module))
    assert await asyncio.wait_for(proc.wait(), 20 * unit()) == 2
    stderr = commands.log_of(proc)
    assert "Error: Invalid value for '--tasks'" in stderr
    assert f'File "{module}", line 4, in settings\n    return {{}}["missing"]' in stderr
    assert "Traceback (most recent call last)" not in stderr
