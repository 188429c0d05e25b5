"""``python -m scheduler.dashboard``: the signed-in link to the bus's dashboard."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from conftest import Commands, unit

from scheduler.auth import create_tokens
from scheduler.dashboard.cli import cli, dashboard_url


def test_the_link_is_the_bus_http_url_with_the_token_in_its_fragment() -> None:
    assert dashboard_url("ws://127.0.0.1:8101", "a/b+c") == "http://127.0.0.1:8101/#token=a%2Fb%2Bc"
    assert dashboard_url("wss://bus.example:443/", None) == "https://bus.example:443/"


def test_the_admin_token_by_default_and_the_monitor_token_read_only(tmp_path: Path) -> None:
    tokens = create_tokens(tmp_path / "tokens.json")
    admin, monitor = tokens.for_role("admin"), tokens.for_role("monitor")
    assert admin is not None and monitor is not None
    args = ["--bus", "ws://127.0.0.1:9", "--token-file", str(tmp_path / "tokens.json")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output == f"http://127.0.0.1:9/#token={admin.token}\n"
    result = CliRunner().invoke(cli, [*args, "--read-only"])
    assert result.output == f"http://127.0.0.1:9/#token={monitor.token}\n"


def test_without_a_token_file_the_link_signs_nobody_in() -> None:
    result = CliRunner().invoke(cli, ["--bus", "ws://127.0.0.1:9"])
    assert result.exit_code == 0
    assert result.stdout == "http://127.0.0.1:9/\n"
    assert "no token file" in result.stderr


def test_a_bad_bus_url_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["--bus", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "not a ws:// or wss:// URL" in result.output


async def test_the_command_runs(commands: Commands) -> None:
    code, stdout = await commands.run(
        "scheduler.dashboard", "--bus", "ws://127.0.0.1:9", timeout=20 * unit()
    )
    assert code == 0 and stdout == "http://127.0.0.1:9/\n"
