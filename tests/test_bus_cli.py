"""``python -m scheduler.bus``: its help, and one real process started and stopped."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import Commands, unit
from websockets.asyncio.client import connect

from scheduler.auth import load_or_create_tokens
from scheduler.bus import cli as bus_cli
from scheduler.bus.cli import cli, default_db
from scheduler.bus.config import BusConfig
from scheduler.bus.journal import Journal

ROOT = Path(__file__).resolve().parent.parent


def test_help_explains_every_option() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    options = (
        "--host",
        "--port",
        "--token",
        "--token-file",
        "--no-v1",
        "--certfile",
        "--keyfile",
        "--insecure",
        "--allow-origin",
        "--db",
        "--lease",
        "--max-evictions",
        "--max-deliveries",
        "--retention",
        "--retention-default",
        "--vacuum-every",
        "--steal",
        "--age-every",
        "--max-backlog-bytes",
        "--max-total-backlog-bytes",
        "--register-timeout",
        "--max-connections",
        "--log-level",
    )
    for option in options:
        assert option in result.output
    assert "SCHEDBUS_ADMIN_TOKEN" in result.output and "XDG_STATE_HOME" in result.output
    assert "127.0.0.1" in result.output and "8101" in result.output
    words = " ".join(result.output.split())
    assert "[urgent|tail|off]" in words and "the most urgent waiting job anywhere" in words
    assert "one priority level more urgent, never past 0" in words


@pytest.mark.parametrize(
    ("args", "blamed"),
    [
        (["--port", "70000"], "--port"),
        (["--lease", "0"], "--lease"),
        (["--retention", "succeeded"], "STATE=SECONDS"),
        (["--retention", "queued=5"], "STATE=SECONDS"),
        (["--retention", "failed=soon"], "must be a number"),
        (["--retention", "failed=-1"], "must be >= 0"),
        (["--steal", "random"], "--steal"),
        (["--age-every", "0"], "--age-every"),
        (["--max-backlog-bytes", "0"], "--max-backlog-bytes"),
        (["--max-total-backlog-bytes", "-1"], "--max-total-backlog-bytes"),
        (["--register-timeout", "0"], "--register-timeout"),
        (["--max-connections", "0"], "--max-connections"),
        (["--commit-window", "-0.01"], "--commit-window"),
        (["--commit-window", "2"], "--commit-window"),
    ],
)
def test_a_bad_option_is_refused(args: list[str], blamed: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert blamed in result.output


def test_the_default_journal_follows_xdg_state_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_db() == tmp_path / "schedbus" / "bus.db"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    assert default_db() == Path.home() / ".local" / "state" / "schedbus" / "bus.db"


def test_options_reach_the_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[BusConfig] = []

    async def fake_serve(config: BusConfig, token_note: str) -> None:
        seen.append(config)

    monkeypatch.setattr(bus_cli, "_serve", fake_serve)
    monkeypatch.setattr(bus_cli, "run_until_signalled", asyncio.run)
    args = ["--db", ":memory:", "--lease", "2.5", "--max-evictions", "1", "--max-deliveries",
            "4", "--retention", "failed=60", "--retention", "dead=0", "--retention-default",
            "3600", "--vacuum-every", "30", "--steal", "tail", "--age-every", "15",
            "--max-backlog-bytes", "1000", "--max-total-backlog-bytes", "5000",
            "--register-timeout", "2.5", "--max-connections", "7"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (config,) = seen
    rules = config.rules
    assert (config.db, rules.lease, rules.max_evictions, rules.max_deliveries) == (
        ":memory:",
        2.5,
        1,
        4,
    )
    assert config.retention == {"failed": 60.0, "dead": 0.0}
    assert (config.retention_default, config.vacuum_every) == (3600.0, 30.0)
    assert (rules.steal, rules.age_every) == ("tail", 15.0)
    assert (config.max_backlog_bytes, config.max_total_backlog_bytes) == (1000, 5000)
    assert (config.register_timeout, config.max_connections) == (2.5, 7)


def test_stealing_is_urgent_and_aging_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[BusConfig] = []

    async def fake_serve(config: BusConfig, token_note: str) -> None:
        seen.append(config)

    monkeypatch.setattr(bus_cli, "_serve", fake_serve)
    monkeypatch.setattr(bus_cli, "run_until_signalled", asyncio.run)
    assert CliRunner().invoke(cli, ["--db", ":memory:"]).exit_code == 0
    assert (seen[0].rules.steal, seen[0].rules.age_every) == ("urgent", None)


def test_a_journal_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    not_a_journal = tmp_path / "notes.db"
    not_a_journal.write_text("hello")
    result = CliRunner().invoke(cli, ["--port", "0", "--db", str(not_a_journal)])
    assert result.exit_code == 1
    assert "Error: cannot open journal" in result.output and str(not_a_journal) in result.output


async def read_url(stderr: asyncio.StreamReader) -> str:
    """Read the bus's log until it says where it listens."""
    while True:
        line = (await stderr.readline()).decode()
        assert line, "the bus exited before listening"
        match = re.search(r"bus listening on (ws://\S+)", line)
        if match:
            return match.group(1)


async def test_the_command_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = os.environ | {
        "PYTHONUNBUFFERED": "1",
        "SCHEDBUS_ADMIN_TOKEN": "t0ken",
        "XDG_STATE_HOME": str(tmp_path),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scheduler.bus", "--port", "0", "--log-level", "debug",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        url = await asyncio.wait_for(read_url(proc.stderr), 20 * unit())
        assert url.startswith("ws://127.0.0.1:") and not url.endswith(":0")
        async with connect(url, compression=None, proxy=None) as ws:
            register = {"cmd": "register", "type": "producer", "protocol": 2, "token": "t0ken"}
            await ws.send(json.dumps(register))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5 * unit()))["type"] == "registered"
            await ws.send('{"cmd": "job_request", "payload": {"priority": 1, "runtime": 1}}')
            assert json.loads(await asyncio.wait_for(ws.recv(), 5 * unit()))["type"] == "accepted"
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(ws.wait_closed(), 10 * unit())
        assert await asyncio.wait_for(proc.wait(), 10 * unit()) == 0
        log = (await proc.stderr.read()).decode()
        assert "SIGTERM received" in log and "bus closed: 1 jobs accepted" in log
        with sqlite3.connect(tmp_path / "schedbus" / "bus.db") as conn:
            assert conn.execute("SELECT state FROM jobs").fetchall() == [("queued",)]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_a_token_file_others_may_read_stops_the_bus_in_one_line(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text("[]")
    tokens.chmod(0o644)
    result = CliRunner().invoke(cli, ["--token-file", str(tokens), "--db", ":memory:"])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: token file {tokens} is accessible by others (mode 0644); it must be"
        f" private: chmod 600 {tokens}\n"
    )


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--host", "0.0.0.0"], "Error: host 0.0.0.0 is not loopback: serve TLS"),
        (["--certfile", "{cert}"], "Error: cannot load TLS certificate"),
    ],
)
def test_an_unsafe_or_broken_listener_is_refused_in_one_line(
    tmp_path: Path, args: list[str], complaint: str
) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate")
    args = [arg.format(cert=cert) for arg in args]
    tokens = ["--token-file", str(tmp_path / "tokens.json"), "--db", ":memory:"]
    result = CliRunner().invoke(cli, [*args, *tokens])
    assert result.exit_code == 1
    assert result.output.startswith(complaint) and result.output.count("\n") == 1


async def run_bus(*args: str, state: Path) -> tuple[int, str]:
    """Run ``python -m scheduler.bus ARGS`` to its end, with its state (the token file) in
    ``state``; return its exit code and stderr."""
    env = os.environ | {"XDG_STATE_HOME": str(state)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scheduler.bus", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 20 * unit())
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, stderr.decode()


async def test_a_port_in_use_is_one_line_and_releases_the_journal(tmp_path: Path) -> None:
    db = tmp_path / "bus.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr = await run_bus("--port", str(port), "--db", str(db), state=tmp_path)
    assert code == 1
    assert stderr.splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ], stderr
    with closing(Journal.open(db)) as journal:  # closed and unlocked again
        assert journal.counts() == {}


@pytest.mark.parametrize("where", ["a-file/bus.db", "a-dir", "not-a-journal.db"])
async def test_a_journal_that_cannot_be_opened_is_one_line(tmp_path: Path, where: str) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "not-a-journal.db").write_text("hello")
    code, stderr = await run_bus("--port", "0", "--db", str(tmp_path / where), state=tmp_path)
    assert code == 1
    (line,) = stderr.splitlines()
    assert line.startswith("Error: ") and str(tmp_path / where) in line, stderr


async def test_a_bad_option_in_a_real_process_is_one_usage_error(tmp_path: Path) -> None:
    code, stderr = await run_bus("--max-connections", "0", state=tmp_path)
    assert code == 2 and "Traceback" not in stderr
    assert stderr.splitlines()[-1].startswith("Error: Invalid value for '--max-connections'")


async def test_a_bus_token_that_repeats_one_of_the_file_is_one_line(commands: Commands) -> None:
    table, _ = load_or_create_tokens(commands.state / "schedbus" / "tokens.json")
    producer = table.for_role("producer")
    assert producer is not None
    code, _ = await commands.run(
        "scheduler.bus", "--port", "0", "--db", ":memory:", "--token", producer.token,
        timeout=20 * unit(),
    )  # fmt: skip
    log = commands.log_of(commands.started[-1])
    assert code == 1
    assert log.strip().splitlines() == [
        f"Error: --token is the token of entry 'producer' (producer) in"
        f" {commands.state / 'schedbus' / 'tokens.json'}; give the bus's extra admin token"
        " a value of its own"
    ], log


def test_the_bus_reads_its_extra_admin_token_from_its_own_variable_only() -> None:
    """SCHEDBUS_TOKEN is every client's own token: a worker's, in an environment shared
    with the bus, must not become an admin token of the bus."""
    params = {param.name: param for param in cli.params}
    assert params["token"].envvar == "SCHEDBUS_ADMIN_TOKEN"
