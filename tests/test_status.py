from click.testing import CliRunner
from rich.console import Console

from scheduler.protocol_stats import BusStats, Percentiles, SchedulerStats, StatsReply
from scheduler.tools.status import cli, render

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
