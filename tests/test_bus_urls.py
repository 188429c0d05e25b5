"""Going round a list of bus URLs (scheduler.policy.bus_urls) and parsing it
(scheduler.connect.parse_bus_urls)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from conftest import Commands, free_port, unit
from websockets.exceptions import InvalidURI

from scheduler.bus.server import BusServer
from scheduler.connect import parse_bus_urls
from scheduler.dashboard.cli import cli as dashboard_cli
from scheduler.policy.bus_urls import UrlRing
from scheduler.producer.cli import cli as producer_cli
from scheduler.producer.client import ProducerClient
from scheduler.tools.status import cli as status_cli

A, B, C = "ws://a:8101", "ws://b:8101", "ws://c:8101"


def test_parse_one_url_or_a_list() -> None:
    assert parse_bus_urls(A) == (A,)
    assert parse_bus_urls(f"{A}, {B} ,{C}") == (A, B, C)


@pytest.mark.parametrize(
    ("text", "bad", "words"),
    [
        ("", "", "bus URL is empty"),
        (f"{A},,{B}", f"{A},,{B}", "bus URL 2 of 3 is empty"),
        (f"{A},", f"{A},", "bus URL 2 of 2 is empty"),
        (f"{A},http://b:8101", "http://b:8101", "bus URL 2 of 2: "),
        ("nonsense", "nonsense", "bus URL: "),
    ],
)
def test_a_bad_entry_is_named(text: str, bad: str, words: str) -> None:
    with pytest.raises(InvalidURI) as caught:
        parse_bus_urls(text)
    assert caught.value.uri == bad
    assert words in caught.value.msg


def test_the_ring_needs_a_url() -> None:
    with pytest.raises(ValueError, match="no bus URL"):
        UrlRing(())


def test_failures_go_round_and_a_whole_round_asks_for_a_pause() -> None:
    ring = UrlRing((A, B, C))
    assert ring.current == A
    assert ring.failed() is False and ring.current == B
    assert ring.failed() is False and ring.current == C
    assert ring.failed() is True and ring.current == A
    assert ring.failed() is False


def test_a_connection_forgets_the_failures_and_stays() -> None:
    ring = UrlRing((A, B))
    ring.failed()
    ring.connected()
    assert ring.current == B
    assert ring.failed() is False and ring.current == A


def test_a_standby_sends_the_client_to_the_leader_it_names() -> None:
    ring = UrlRing((A, B, C))
    assert ring.redirected(C) is False
    assert ring.current == C
    ring.connected()
    assert ring.current == C
    assert ring.failed() is False
    assert ring.current == B


def test_a_leader_outside_the_list_is_tried_too() -> None:
    ring = UrlRing((A,))
    assert ring.redirected("ws://elsewhere:1") is True
    assert ring.current == "ws://elsewhere:1"


def test_a_standby_naming_no_one_or_itself_counts_as_a_failure() -> None:
    ring = UrlRing((A, B))
    assert ring.redirected(None) is False and ring.current == B
    assert ring.redirected(B) is True and ring.current == A


@pytest.mark.parametrize(
    ("command", "env"),
    [(status_cli, False), (producer_cli, False), (dashboard_cli, False), (status_cli, True)],
)
def test_every_command_names_the_bad_entry_of_its_url_list(
    command: click.Command, env: bool
) -> None:
    text = f"{A},,{B}"
    args, environ = ([], {"SCHEDBUS_URL": text}) if env else (["--bus", text], {})
    result = CliRunner().invoke(command, args, env=environ)
    assert result.exit_code == 2
    assert "bus URL 2 of 3 is empty" in result.output


async def test_a_client_given_a_list_skips_a_dead_bus(bus: BusServer) -> None:
    dead = f"ws://127.0.0.1:{free_port()}"
    async with ProducerClient(f"{dead},{bus.url}", connect_timeout=10 * unit()) as client:
        assert client.name is not None


async def test_a_v1_producer_given_a_list_sends_to_the_first(
    bus: BusServer, commands: Commands
) -> None:
    code, _ = await commands.run(
        "scheduler.producer", "--bus", f"{bus.url},ws://127.0.0.1:1", "--v1", "--count", "1",
        "-p", "0", "--runtime", "0.1", timeout=30 * unit(),
    )  # fmt: skip
    assert code == 0
    async with ProducerClient(bus.url) as client:
        assert (await client.stats()).bus.submitted == 1
