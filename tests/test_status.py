import io
import re

import pytest
from click.testing import CliRunner
from conftest import Commands, unit, wait_until
from rich.console import Console
from terminal import Terminal

from scheduler.bus.server import BusServer
from scheduler.protocol_schedules import ScheduleInfo, Schedules, ScheduleSpec
from scheduler.protocol_stats import BusStats, Percentiles, SchedulerStats, StatsReply
from scheduler.tools.status import cli, render
from scheduler.tools.status_view import Field, StatusView, column_widths, table_width

REPLY = StatsReply(
    bus=BusStats(
        uptime_s=12.0,
        submitted=7,
        succeeded=5,
        stolen=2,
        steal_attempts=3,
        unserved={"render": 2},
        wait_s={"0": Percentiles(count=3, p50=0.001, p90=0.002, p99=0.003, max=0.004)},
    ),
    schedulers=[
        SchedulerStats(
            name="s1", protocol=2, size=2, busy=2, queued=1, tasks=["sleep"],
            running_priorities=[8, 3], stole=2, heartbeat_age_s=0.4,
        )
    ],
)  # fmt: skip


def test_the_tables_show_counts_schedulers_and_waits() -> None:
    console = Console(record=True, width=200)
    console.print(render(REPLY))
    text = console.export_text()
    for part in ("submitted", "steal attempts", "no scheduler serves 'render'", "s1", "2/2",
                 "3 8", "0.4 s ago", "0.003"):  # fmt: skip
        assert part in text


def test_json_and_watch_do_not_mix() -> None:
    result = CliRunner().invoke(cli, ["--json", "--watch", "1"])
    assert result.exit_code == 2
    assert "--watch" in result.output


def test_an_unreachable_bus_is_a_clear_error() -> None:
    result = CliRunner().invoke(cli, ["--bus", "ws://127.0.0.1:9", "--connect-timeout", "0.3"])
    assert result.exit_code == 1
    assert "ws://127.0.0.1:9" in result.output


BUSY = StatsReply(
    bus=BusStats(
        uptime_s=3600.0,
        submitted=123456,
        steal_attempts=98765,
        unserved={"render": 2},
        wait_s={"10": Percentiles(count=3000, p50=10.001, p90=20.002, p99=120.003, max=1234.5)},
    ),
    schedulers=[
        SchedulerStats(
            name="vm-worker-03.internal", protocol=2, size=16, busy=12, queued=140,
            tasks=["sleep", "double", "add", "describe", "explode", "job-probe"],
            running_priorities=[8, 3, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8], started=123456,
            succeeded=120000, failed=3000, timed_out=12, evicted=440, heartbeat_age_s=0.4,
        ),
        SchedulerStats(
            name="s1", protocol=2, size=2, busy=2, queued=1, tasks=["sleep"],
            running_priorities=[8, 3], stole=2,
        ),
    ],
)  # fmt: skip
"""Long names, many tasks, large numbers: what crowded the old table at 80 columns."""

SCHEDULES = Schedules(
    schedules=[
        ScheduleInfo(
            spec=ScheduleSpec(name="nightly-report", task="render", cron="0 3 * * *",
                              tz="Europe/Amsterdam"),
            next_fire=1_900_000_000.0, last_fire=1_899_900_000.0, last_outcome="succeeded",
        )
    ]
)  # fmt: skip


def _drawn(view: StatusView, width: int, height: int = 25) -> list[str]:
    console = Console(file=io.StringIO(), width=width, height=height, color_system=None)
    console.print(view)
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue().splitlines()


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_at_every_width_each_cell_is_whole_and_the_tasks_are_shown(width: int) -> None:
    lines = _drawn(StatusView(BUSY, SCHEDULES), width)
    text = "\n".join(lines)
    assert max(map(len, lines)) <= width
    assert "…" not in text  # no cell is cut short
    for whole in ("vm-worker-03.internal", "12/16", "140", "s1", "2/2", "slots", "queue",
                  "nightly-report", "0 3 * * *", "123456", "98765", "1234.500"):  # fmt: skip
        assert whole in text, (whole, text)
    for task in BUSY.schedulers[0].tasks:
        assert re.search(rf"\b{task}\b", text), task
    assert "no scheduler serves 'render'" in text


def test_a_wide_terminal_shows_every_column_a_narrow_one_names_those_left_out() -> None:
    wide = "\n".join(_drawn(StatusView(BUSY), 200))
    assert "not shown" not in wide
    assert "stolen from" in wide and "0.4 s ago" in wide
    narrow = "\n".join(_drawn(StatusView(BUSY), 80))
    assert "not shown at 80 columns: succeeded," in narrow


def test_when_even_the_essential_columns_do_not_fit_each_scheduler_is_a_block() -> None:
    lines = _drawn(StatusView(BUSY), 40)
    text = "\n".join(lines)
    assert max(map(len, lines)) <= 40 and "…" not in text
    assert any(re.fullmatch(r"\s*name\s+vm-worker-03\.internal\s*", line) for line in lines)
    assert any(re.fullmatch(r"\s*stolen from\s+0\s*", line) for line in lines)


def test_a_layout_is_chosen_from_the_columns_each_field_needs() -> None:
    fields = (Field("name", left=True), Field("n", keep=1), Field("tasks", wrap=True, room=6))
    rows = [["abc", "12345", "aa bbbb cc"]]
    assert table_width([3, 5]) == 3 + 5 + 3 * 2 + 1
    assert column_widths(fields, rows, 100) == [4, 5, 10]  # all whole, on one line
    assert column_widths(fields, rows, 28) == [4, 5, 9]  # what is left goes to the tasks
    assert column_widths(fields, rows, 25) == [4, 5, 6]  # the tasks wrap at their room
    assert column_widths(fields, rows, 24) is None
    one = [["abc", "12345", "aaaaaaaa b"]]
    assert column_widths(fields, one, 27) == [4, 5, 8]  # never less than a word


def test_under_watch_the_snapshot_is_cut_to_the_terminal_and_says_what_is_hidden() -> None:
    everything = _drawn(StatusView(BUSY, SCHEDULES), 80)
    lines = _drawn(StatusView(BUSY, SCHEDULES, fit_height=True), 80, height=20)
    assert len(lines) == 20
    assert lines[:19] == everything[:19]
    hidden = len(everything) - 19
    assert lines[19].startswith(f"… {hidden} more lines hidden (bus, waits, schedules)")
    assert len(lines[19]) <= 80
    tall = _drawn(StatusView(BUSY, SCHEDULES, fit_height=True), 80, height=len(everything))
    assert tall == everything  # when it fits, nothing is cut and nothing is said


async def test_status_watch_on_a_real_terminal_fits_it(bus: BusServer, commands: Commands) -> None:
    await commands.start(
        "scheduler.worker", "--tasks", "tests/sample_tasks.py", "--bus", bus.url, "--name", "w1"
    )
    await wait_until(lambda: "w1" in bus.scheduler_names(), 20 * unit(), "w1 registers")
    terminal = Terminal(columns=80, rows=24)
    try:
        await terminal.start(commands, "scheduler.status", "--bus", bus.url, "--watch", "0.2")
        await wait_until(
            lambda: "more lines hidden" in terminal.text(), 20 * unit(), "status draws"
        )
        drawn = terminal.text()
    finally:
        terminal.close()
    assert re.search(r"│ w1 +│ +0/\d+ │ +0 │", drawn), drawn
    for task in ("double", "explode", "job-probe"):  # the tasks w1 serves, whole
        assert re.search(rf"\b{task}\b", drawn), task
    drawn = drawn[: drawn.rindex("more lines hidden")]  # the last frame may be half drawn
    assert "…" not in re.sub(r"… \d+ (more lines hidden)?", "", drawn)  # only in the notice
