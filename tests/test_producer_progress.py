"""``producer --wait``: the progress bar on a terminal, the plain lines elsewhere, and the
exit status that says whether every job succeeded."""

from __future__ import annotations

import asyncio
import io
import logging
import signal

import pytest
from conftest import Commands, unit, wait_until
from rich.console import Console
from terminal import Terminal

from scheduler.bus.server import BusServer
from scheduler.producer.follower import summary_text
from scheduler.producer.progress_view import ProgressView
from scheduler.producer.tally import EXIT_ALL_SUCCEEDED, EXIT_NOT_ALL_SUCCEEDED, Tally
from scheduler.producer.tracking import JobRecord


def test_the_tally_counts_each_job_once_in_its_latest_state() -> None:
    tally = Tally(planned=4)
    for job in ("a", "b", "c"):
        tally.expect(job)
    tally.set_state("a", "running")
    tally.set_state("a", "succeeded")
    tally.set_state("a", "running")  # a late event cannot undo a final state
    tally.set_state("b", "running")
    tally.expect("b")  # an event came first: the job is not counted twice
    assert (tally.total, tally.succeeded, tally.running, tally.waiting) == (4, 1, 1, 2)
    assert tally.exit_code() == EXIT_ALL_SUCCEEDED


@pytest.mark.parametrize(
    "state", ["failed", "dead", "timed_out", "cancelled", "expired", "skipped"]
)
def test_any_job_that_did_not_succeed_makes_the_exit_status_non_zero(state: str) -> None:
    tally = Tally(planned=2)
    tally.set_state("a", "succeeded")
    tally.set_state("b", state)
    assert (tally.unsuccessful, tally.waiting) == (1, 0)
    assert tally.exit_code() == EXIT_NOT_ALL_SUCCEEDED


def test_a_job_the_bus_refused_in_a_batch_makes_the_exit_status_non_zero() -> None:
    tally = Tally(planned=3, refused=1)
    tally.set_state("a", "succeeded")
    tally.set_state("b", "succeeded")
    assert tally.total == 2 and tally.waiting == 0
    assert tally.exit_code() == EXIT_NOT_ALL_SUCCEEDED


def test_broadcast_runs_grow_the_total() -> None:
    tally = Tally(planned=1)
    for job in ("parent", "parent/w1", "parent/w2"):
        tally.expect(job)
    assert tally.total == 3


def test_the_summary_says_how_many_ended_in_each_state_and_how_many_were_refused() -> None:
    records = [JobRecord("a", 1, None, state="succeeded"), JobRecord("b", 1, None, state="dead")]
    text = summary_text(records)
    assert text.startswith("2 jobs final: 1 dead, 1 succeeded; 0 evictions; wait median")
    assert "refused" not in text
    assert summary_text(records, refused=2).endswith("; 2 refused")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _draw(width: int) -> str:
    """Drive a :class:`ProgressView` through ten jobs on a ``width``-column terminal."""
    clock = [0.0]
    screen = _Terminal()
    console = Console(file=screen, force_terminal=True, width=width, color_system=None)
    tally = Tally(planned=10)
    with ProgressView(console, get_time=lambda: clock[0]) as view:
        for index in range(10):
            tally.expect(f"job-{index}")
        for index in range(4):
            clock[0] += 0.5
            tally.set_state(f"job-{index}", "succeeded")
            view.update(tally)
        failed = JobRecord("job-4-full-id", 1, None, "explode", state="failed", scheduler="w1")
        failed.error = "TaskFailure: boom"
        tally.set_state("job-4", "failed")
        view.job_final(failed)
        view.job_final(JobRecord("job-0", 1, None, state="succeeded"))
        tally.set_state("job-5", "running")
        clock[0] += 0.5
        view.update(tally)
        view.progress.refresh()
    return screen.getvalue()


@pytest.mark.parametrize("width", [60, 80, 120])
def test_the_bar_shows_done_failed_running_waiting_rate_and_eta(width: int) -> None:
    screen = _draw(width)
    last = screen.rsplit("\x1b[2K", 1)[-1]  # the final frame
    bar, counts = last.strip("\n\x1b[?25h").splitlines()
    assert "jobs" in bar and "5/10" in bar and "jobs/s" in bar and "ETA 0:00:" in bar
    assert counts.strip() == "4 succeeded · 1 failed · 1 running · 4 waiting"
    assert max(len(line) for line in (bar, counts)) <= width
    assert "…" not in last
    assert "failed job-4-full-id explode on w1: TaskFailure: boom" in screen
    assert "job-0 " not in screen  # a job that succeeded gets no line of its own


def test_log_records_print_above_the_bar_and_the_handlers_come_back() -> None:
    root = logging.getLogger()
    terminal = logging.StreamHandler(_Terminal())
    terminal.setFormatter(logging.Formatter("LOG %(message)s"))
    saved = list(root.handlers)
    root.handlers[:] = [terminal]
    try:
        screen = _Terminal()
        console = Console(file=screen, force_terminal=True, width=80, color_system=None)
        with ProgressView(console):
            logging.getLogger("scheduler.producer").warning("a warning")
        assert root.handlers == [terminal]
    finally:
        root.handlers[:] = saved
    assert "LOG a warning" in screen.getvalue()
    assert terminal.stream.getvalue() == ""


async def _start_worker(bus: BusServer, commands: Commands) -> None:
    await commands.start(
        "scheduler.worker", "--tasks", "tests/sample_tasks.py", "--bus", bus.url, "--name", "w1"
    )
    await wait_until(lambda: "w1" in bus.scheduler_names(), 20 * unit(), "w1 registers")


EXPLODE = ("--count", "2", "-p", "0", "--task", "explode", "--args", '["boom"]', "--wait")


async def test_jobs_that_fail_make_a_non_zero_exit_with_plain_lines_off_a_terminal(
    bus: BusServer, commands: Commands
) -> None:
    await _start_worker(bus, commands)
    code, stdout = await commands.run(
        "scheduler.producer", "--bus", bus.url, *EXPLODE, timeout=30 * unit()
    )
    stderr = commands.log_of(commands.started[-1])
    assert code == EXIT_NOT_ALL_SUCCEEDED, stderr
    assert stdout == ""
    assert stderr.count(" failed on w1 after ") == 2  # the per-job lines, as before
    assert "2 jobs final: 2 failed; 0 evictions" in stderr
    assert "━" not in stderr


async def test_on_a_terminal_a_progress_bar_shows_the_jobs_and_the_exit_is_non_zero(
    bus: BusServer, commands: Commands
) -> None:
    await _start_worker(bus, commands)
    terminal = Terminal(columns=80)
    try:
        proc = await terminal.start(commands, "scheduler.producer", "--bus", bus.url, *EXPLODE)
        code = await asyncio.wait_for(proc.wait(), 30 * unit())
        await asyncio.wait_for(terminal.closed.wait(), 10 * unit())
        drawn = terminal.text()
    finally:
        terminal.close()
    assert code == EXIT_NOT_ALL_SUCCEEDED, drawn
    assert "━" in drawn and "2/2" in drawn
    assert "0 succeeded · 2 failed · 0 running · 0 waiting" in drawn
    assert drawn.count("explode on w1: sample_tasks.TaskFailure:") == 2
    assert "2 jobs final: 2 failed" in drawn
    assert "submitted " not in drawn  # one line per submit would scroll the bar away


async def test_a_batch_the_bus_refused_entirely_ends_at_once_with_a_non_zero_exit(
    bus: BusServer, commands: Commands
) -> None:
    batch = ("scheduler.producer", "--bus", bus.url, "--count", "2", "--bulk", "--runtime",
             "0.1-0.9", "--id-prefix", "batch")  # fmt: skip
    code, _ = await commands.run(*batch, "--seed", "1", timeout=30 * unit())
    assert code == 0  # accepted; no scheduler runs them, and this run does not wait
    code, _ = await commands.run(*batch, "--seed", "2", "--wait", timeout=30 * unit())
    stderr = commands.log_of(commands.started[-1])
    assert code == EXIT_NOT_ALL_SUCCEEDED, stderr
    assert "job 0 refused" in stderr and "job 1 refused" in stderr
    assert "0 jobs final: none; 0 evictions; wait median 0.00s, max 0.00s; 2 refused" in stderr


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_a_signal_during_wait_exits_as_a_shell_expects_and_says_what_is_left(
    bus: BusServer, commands: Commands, signum: int, code: int
) -> None:
    """A script running `producer --wait && next` must not go on: the jobs' outcome is
    unknown. (No scheduler serves the job, so it never ends by itself.)"""
    producer = await commands.start(
        "scheduler.producer", "--bus", bus.url, "--count", "1", "--runtime", "1", "--wait"
    )
    await wait_until(lambda: "submitted " in commands.log_of(producer), 20 * unit(), "the submit")
    producer.send_signal(signum)
    assert await asyncio.wait_for(producer.wait(), 20 * unit()) == code
    stderr = commands.log_of(producer)
    assert "0 jobs final: none" in stderr
    assert "interrupted: 1 of 1 jobs not final; they go on without this producer" in stderr


async def test_broadcast_with_after_is_a_usage_error(bus: BusServer, commands: Commands) -> None:
    """`broadcast` cannot be combined with `depends_on`: a usage error (2), as every other
    pair of options that do not go together, not the bus's refusal (1)."""
    code, _ = await commands.run(
        "scheduler.producer", "--bus", bus.url, "--broadcast", "--after", "some-job",
        "--count", "1", "--runtime", "0.1",
        timeout=20 * unit(),
    )  # fmt: skip
    assert code == 2
    assert "--broadcast and --after do not go together" in commands.log_of(commands.started[-1])
