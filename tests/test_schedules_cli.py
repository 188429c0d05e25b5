"""``python -m scheduler.schedules`` and ``status`` against a real bus."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

from click.testing import CliRunner
from conftest import Commands, unit

from scheduler.bus.server import BusServer
from scheduler.tools.schedules import cli


async def test_add_list_show_next_pause_resume_trigger_remove(
    bus: BusServer, commands: Commands
) -> None:
    run = ("scheduler.schedules", "--bus", bus.url)
    code, out = await commands.run(
        *run, "add", "nightly", "--task", "report", "--cron", "0 3 * * *", "--tz",
        "Europe/Berlin", "--args", '{"day": "today"}', "--priority", "2",
        timeout=20 * unit(),
    )  # fmt: skip
    assert code == 0 and out.startswith("schedule nightly added\nnightly cron '0 3 * * *'")
    code, out = await commands.run(*run, "next", "nightly", "--count", "3", timeout=20 * unit())
    times = [datetime.fromisoformat(line) for line in out.split()]
    assert code == 0 and len(times) == 3
    assert {t.astimezone(ZoneInfo("Europe/Berlin")).hour for t in times} == {3}
    code, out = await commands.run(*run, "pause", "nightly", timeout=20 * unit())
    assert code == 0 and "nightly cron '0 3 * * *' Europe/Berlin task=report paused" in out
    code, out = await commands.run(*run, "resume", "nightly", timeout=20 * unit())
    assert code == 0 and out.startswith("schedule nightly resumed")
    code, out = await commands.run(*run, "trigger", "nightly", timeout=20 * unit())
    assert code == 0 and "triggered: job nightly@" in out and "last nightly@" in out
    code, out = await commands.run(*run, "show", "nightly", "--json", timeout=20 * unit())
    shown = json.loads(out)
    assert shown["spec"]["args"] == {"day": "today"} and shown["last_outcome"] == "queued"
    code, out = await commands.run("scheduler.status", "--bus", bus.url, timeout=20 * unit())
    assert code == 0 and "1 schedules" in out and "nightly" in out and "queued" in out
    code, out = await commands.run(*run, "remove", "nightly", timeout=20 * unit())
    assert code == 0 and "removed" in out
    code, out = await commands.run(*run, "list", timeout=20 * unit())
    assert (code, out) == (0, "no schedules\n")


def test_bad_input_names_the_field() -> None:
    runner = CliRunner()
    both = ["add", "x", "--task", "t", "--every", "-1"]
    result = runner.invoke(cli, ["--bus", "ws://127.0.0.1:9", *both])
    assert result.exit_code == 1 and "$.every" in result.output
    bad_args = ["add", "x", "--task", "t", "--every", "1", "--args", "{"]
    result = runner.invoke(cli, ["--bus", "ws://127.0.0.1:9", *bad_args])
    assert result.exit_code == 2 and "--args" in result.output


async def test_an_unknown_schedule_is_an_error(bus: BusServer, commands: Commands) -> None:
    run = ("scheduler.schedules", "--bus", bus.url)
    code, _ = await commands.run(*run, "show", "nope", timeout=20 * unit())
    assert code == 1
    log = commands.log_of(commands.started[-1])
    assert "no schedule named 'nope'" in log
