"""Tokens and roles: the token file, who may register as what, who may do what, v1 clients
on loopback only, TLS, and the commands that find their token by themselves."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import ROOT, BusProcess, Commands, unit
from test_bus import Frame, client, recv, register, registered, request, submit, timeout

from scheduler.auth import (
    Token,
    TokenFileError,
    TokenTable,
    create_tokens,
    load_or_create_tokens,
    load_tokens,
    token_for,
)
from scheduler.bus.config import BusConfig
from scheduler.bus.server import BusServer
from scheduler.producer.cli import cli as producer_cli
from scheduler.producer.client import ProducerClient, SubmitError
from scheduler.protocol import JobPayload
from scheduler.tools.status import cli as status_cli

TOKENS = TokenTable(
    (
        Token("alice", "producer", "t-alice"),
        Token("bob", "producer", "t-bob"),
        Token("watcher", "monitor", "t-monitor"),
        Token("runner", "scheduler", "t-scheduler"),
        Token("ops", "admin", "t-admin"),
    )
)


@asynccontextmanager
async def secured(**config: Any) -> AsyncIterator[BusServer]:
    """A real bus with :data:`TOKENS` on 127.0.0.1 and an ephemeral port."""
    async with BusServer(BusConfig(port=0, tokens=TOKENS, **config)) as bus:
        yield bus


# --- the token file ----------------------------------------------------------------------


def test_the_token_file_is_created_private_with_a_token_per_role(tmp_path: Path) -> None:
    path = tmp_path / "state" / "schedbus" / "tokens.json"
    table, created = load_or_create_tokens(path)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [(t.name, t.role) for t in table.tokens] == [
        ("producer", "producer"),
        ("scheduler", "scheduler"),
        ("monitor", "monitor"),
        ("admin", "admin"),
    ]
    assert all(len(t.token) == 64 for t in table.tokens)
    assert load_or_create_tokens(path) == (table, False)
    assert token_for("monitor", path) == table.tokens[2].token
    assert [p.name for p in path.parent.iterdir()] == ["tokens.json"], "no temporary left"
    with pytest.raises(FileExistsError):
        create_tokens(path)  # never replaces a file another process wrote meanwhile


def test_a_token_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    load_or_create_tokens(path)
    path.chmod(0o640)
    with pytest.raises(TokenFileError, match=r"accessible by others \(mode 0640\).*chmod 600"):
        load_tokens(path)


def test_a_token_file_in_a_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    """Whoever may write in the directory may swap the file (or the journal beside it)."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(TokenFileError, match=r"writable by others \(mode 0777\).*chmod 700"):
        load_or_create_tokens(shared / "tokens.json")
    assert list(shared.iterdir()) == [], "nothing created there"
    shared.chmod(0o755)
    assert load_or_create_tokens(shared / "tokens.json")[1]


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("{", "Expected `array`"),
        ('[{"name": "x", "role": "root", "token": "t"}]', "Invalid enum value 'root'"),
        ('[{"name": "x", "role": "admin", "token": ""}]', "non-empty"),
        (
            '[{"name": "a", "role": "admin", "token": "t"}, {"name": "b", "role": "admin",'
            ' "token": "t"}]',
            "same token",
        ),  # fmt: skip
    ],
)
def test_a_bad_token_file_is_refused_naming_it(
    tmp_path: Path, content: str, complaint: str
) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(TokenFileError, match=complaint) as refused:
        load_tokens(path)
    assert str(path) in str(refused.value)


def test_no_token_file_means_no_token(tmp_path: Path) -> None:
    assert token_for("producer", tmp_path / "missing.json") is None


def test_a_token_is_found_by_comparing_every_entry() -> None:
    assert TOKENS.find("t-bob") == Token("bob", "producer", "t-bob")
    assert TOKENS.find("t-bo") is None
    assert TOKENS.find("") is None


# --- register ----------------------------------------------------------------------------


async def refused(ws: Any, frame: Frame) -> Frame:
    """Send a register that must be refused; return the error and check the close."""
    await ws.send(json.dumps(frame))
    error = await recv(ws)
    assert error["type"] == "error", error
    await asyncio.wait_for(ws.wait_closed(), timeout())
    assert ws.close_code == 1008
    return error


async def test_a_token_decides_what_a_client_may_register_as() -> None:
    async with secured() as bus:
        cases = [
            ({"type": "scheduler", "token": "t-alice"}, "type", "a producer token may not"
             " register as a scheduler; only as a producer"),
            ({"type": "scheduler", "token": "t-monitor"}, "type", "a monitor token may not"
             " register as a scheduler; only as a monitor or producer"),
            ({"type": "producer", "token": "nope"}, "token", "invalid token"),
            ({"type": "producer"}, "token", "token required: this bus accepts only clients"
             " with a token"),
        ]  # fmt: skip
        for fields, field, message in cases:
            async with client(bus) as ws:
                error = await refused(ws, {"cmd": "register", "protocol": 2, **fields})
                assert (error["field"], error["message"]) == (field, message)
        async with client(bus) as ws:
            await ws.send('{"cmd": "stats", "protocol": 2}')  # nothing before a register
            assert (await recv(ws))["message"] == "register first"
        for role, token in [("scheduler", "t-admin"), ("monitor", "t-monitor")]:
            async with client(bus) as ws:
                await register(ws, role, token=token)


async def test_a_producer_may_not_cancel_or_watch_another_producers_job() -> None:
    async with secured() as bus, client(bus) as alice, client(bus) as bob:
        await register(alice, "producer", token="t-alice")
        await register(bob, "producer", token="t-bob")
        job_id = await submit(alice, task="unserved")
        cancel = await request(bob, {"cmd": "cancel", "id": job_id, "ref": 1})
        rule = f"job {job_id} belongs to another submitter; a producer may"
        assert cancel == {"type": "error", "message": f"id: {rule} cancel only its own jobs",
                          "field": "id", "ref": 1}  # fmt: skip
        watch = await request(bob, {"cmd": "watch", "ids": [job_id], "ref": 2})
        assert watch == {"type": "error", "message": f"ids: {rule} watch only its own jobs",
                         "field": "ids", "ref": 2}  # fmt: skip
        mine = await request(alice, {"cmd": "watch", "ids": [job_id]})
        assert mine["jobs"][0]["state"] == "queued"
        assert (await request(alice, {"cmd": "cancel", "id": job_id}))["state"] == "cancelled"


async def test_a_monitor_reads_but_may_not_cancel_submit_or_vacuum() -> None:
    async with secured() as bus, client(bus) as alice, client(bus) as monitor:
        await register(alice, "producer", token="t-alice")
        await register(monitor, "monitor", token="t-monitor")
        job_id = await submit(alice, task="unserved")
        await recv(monitor)  # its accepted event
        watched = await request(monitor, {"cmd": "watch", "ids": [job_id]})
        assert [e["id"] for e in watched["jobs"]] == [job_id]
        assert (await request(monitor, {"cmd": "stats"}))["type"] == "stats"
        cancel = await request(monitor, {"cmd": "cancel", "id": job_id})
        assert cancel["message"] == (
            "a monitor token may not send cancel; only a producer or admin token may"
        )
        vacuum = await request(monitor, {"cmd": "vacuum"})
        assert vacuum["message"] == "a monitor token may not send vacuum; only an admin token may"
    async with secured() as bus, client(bus) as reader:
        await register(reader, "producer", token="t-monitor")  # status connects this way
        frame = {"cmd": "job_request", "payload": {"priority": 1, "runtime": 1}}
        submitted = await request(reader, frame)
        assert "a monitor token may not send job_request" in submitted["message"]


async def test_only_an_admin_vacuums_and_cancels_any_job() -> None:
    async with secured() as bus, client(bus) as alice, client(bus) as admin:
        await register(alice, "producer", token="t-alice")
        await register(admin, "monitor", token="t-admin")
        job_id = await submit(alice, task="unserved")
        vacuum = await request(alice, {"cmd": "vacuum"})
        assert vacuum["message"] == "a producer token may not send vacuum; only an admin token may"
        assert (await request(admin, {"cmd": "vacuum"}))["type"] == "vacuumed"
        cancelled = await request(admin, {"cmd": "cancel", "id": job_id})
        assert cancelled["state"] == "cancelled"


async def test_a_scheduler_token_may_not_submit() -> None:
    async with secured() as bus, client(bus) as runner:
        await register(runner, "scheduler", token="t-scheduler")
        await runner.send('{"cmd": "job_request", "payload": {"priority": 1, "runtime": 1}}')
        error = await recv(runner)
        assert "a scheduler may not send " in error["message"]


# --- v1 clients --------------------------------------------------------------------------


async def test_a_tokenless_v1_client_is_accepted_from_loopback_without_origin() -> None:
    config = {"allow_origins": ("http://localhost:3000",)}
    async with secured(**config) as bus, client(bus) as runner, client(bus) as v1:
        await register(runner, "scheduler", token="t-scheduler")
        await v1.send('{"cmd": "register", "type": "producer"}')
        await v1.send('{"cmd": "job_request", "payload": {"priority": 3, "runtime": 1}}')
        assert (await recv(runner))["job"]["priority"] == 3
        async with client(bus, origin="http://localhost:3000") as browser:
            await browser.send('{"cmd": "register", "type": "producer"}')
            await asyncio.wait_for(browser.wait_closed(), timeout())
            assert browser.close_code == 1008
    async with secured(v1=False) as bus, client(bus) as v1:
        await v1.send('{"cmd": "register", "type": "producer"}')
        await asyncio.wait_for(v1.wait_closed(), timeout())
        assert v1.close_code == 1008


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made with the openssl CLI
    (Debian's ``openssl``, which ``scripts/setup`` installs when it is missing)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=schedbus",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_serves_wss_that_clients_verify_with_their_cafile(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    config = {"certfile": str(cert), "keyfile": str(key)}
    async with secured(**config) as bus:
        assert bus.url.startswith("wss://127.0.0.1:")
        async with ProducerClient(bus.url, token="t-alice", cafile=str(cert)) as producer:
            job_id = await producer.submit(JobPayload(priority=1, runtime=1, task="unserved"))
            assert (await producer.watch([job_id])).jobs[0].state == "queued"
        untrusting = ProducerClient(bus.url, token="t-alice", connect_timeout=0.5 * unit())
        with pytest.raises(Exception, match="could not reach"):
            await untrusting.connect()


def test_a_bus_beyond_loopback_needs_tls_or_insecure(certificate: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="not loopback: serve TLS"):
        BusConfig(host="0.0.0.0")
    BusConfig(host="0.0.0.0", insecure=True)
    BusConfig(host="0.0.0.0", certfile=str(certificate[0]), keyfile=str(certificate[1]))
    with pytest.raises(ValueError, match="keyfile needs a certfile"):
        BusConfig(keyfile="key.pem")
    context = BusConfig(certfile=str(certificate[0]), keyfile=str(certificate[1])).ssl_context()
    assert isinstance(context, ssl.SSLContext)


# --- the commands ------------------------------------------------------------------------


async def test_the_commands_find_their_tokens_and_roles_hold(
    commands: Commands, tmp_path: Path
) -> None:
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    tokens = commands.state / "schedbus" / "tokens.json"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    await commands.start("scheduler.test_scheduler", "--bus", bus.url, "-s", "2")
    code, out = await commands.run(
        "scheduler.producer", "--bus", bus.url, "--count", "2", "-p", "0.1",
        "--runtime", "1-1", "--wait", "--id-prefix", "cli-", timeout=30 * unit(),
    )  # fmt: skip
    assert code == 0, out
    code, out = await commands.run(
        "scheduler.status", "--bus", bus.url, "--json", timeout=20 * unit()
    )
    assert code == 0 and json.loads(out)["bus"]["succeeded"] == 2
    code, _ = await commands.run("scheduler.jobs", "--bus", bus.url, "vacuum", timeout=20)
    assert code == 0  # the admin token vacuums
    async with ProducerClient(bus.url, token=bus.token("producer")) as producer:
        with pytest.raises(SubmitError, match="a producer token may not send vacuum"):
            await producer.vacuum()
    environment = os.environ | {"XDG_STATE_HOME": str(tmp_path / "elsewhere")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scheduler.producer", "--bus", bus.url, "--count", "1",
        cwd=ROOT, env=environment, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30 * unit())
    assert proc.returncode == 1 and b"token required" in err


async def test_registered_replies_carry_no_secret_for_non_schedulers() -> None:
    async with secured() as bus, client(bus) as alice:
        reply = await registered(alice, "producer", token="t-alice")
        assert reply.get("secret") is None


def test_a_client_command_refuses_a_token_file_others_may_read(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    load_or_create_tokens(path)
    path.chmod(0o604)
    env = {"SCHEDBUS_TOKEN_FILE": str(path)}
    result = CliRunner().invoke(producer_cli, ["--count", "1"], env=env)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: token file {path} is accessible by others")
    missing = CliRunner().invoke(status_cli, ["--token-file", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
