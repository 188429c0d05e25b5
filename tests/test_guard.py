"""The handshake guard's decisions, without sockets: which Host and Origin headers pass."""

from __future__ import annotations

import pytest

from scheduler.bus.guard import (
    LOOPBACK_HOSTS,
    allowed_hosts,
    bracketed,
    header_refusal,
    host_allowed,
    host_name,
    is_ip_literal,
)

ALLOWED = allowed_hosts("bus.example")


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("localhost:8101", "localhost"),
        ("LocalHost", "localhost"),
        (" 127.0.0.1:9 ", "127.0.0.1"),
        ("[::1]:8101", "[::1]"),
        ("[::1]", "[::1]"),
        ("bus.example", "bus.example"),
    ],
)
def test_the_host_part_of_a_host_header(header: str, host: str) -> None:
    assert host_name(header) == host


def test_ipv6_addresses_are_bracketed_once() -> None:
    assert bracketed("::1") == "[::1]"
    assert bracketed("[::1]") == "[::1]"
    assert bracketed("127.0.0.1") == "127.0.0.1"
    assert bracketed("bus.example") == "bus.example"


def test_ip_literals_are_told_from_names() -> None:
    assert is_ip_literal("192.0.2.9") and is_ip_literal("[::1]") and is_ip_literal("::1")
    assert not is_ip_literal("localhost") and not is_ip_literal("evil.example")


def test_the_listening_host_and_loopback_names_are_allowed() -> None:
    assert allowed_hosts("BUS.example") == LOOPBACK_HOSTS | {"bus.example"}
    assert "[::1]" in allowed_hosts("::1") and "[fe80::1]" in allowed_hosts("fe80::1")


def test_a_rebinding_name_is_refused_but_any_ip_literal_passes() -> None:
    assert host_allowed("localhost", ALLOWED) and host_allowed("bus.example", ALLOWED)
    assert host_allowed("192.0.2.9", ALLOWED) and host_allowed("[2001:db8::1]", ALLOWED)
    assert not host_allowed("evil.example", ALLOWED)


@pytest.mark.parametrize(
    ("hosts", "origins", "refused"),
    [
        (["localhost:8101"], [], None),
        (["bus.example:8101"], ["http://localhost:3000"], None),
        (["evil.example:8101"], [], "Host"),
        ([], [], "Host"),
        (["localhost", "localhost"], [], "Host"),
        (["evil.example"], ["http://evil.example"], "Host"),
        (["localhost"], ["http://evil.example"], "Origin"),
        (["localhost"], ["http://localhost:3000", "null"], "Origin"),
    ],
)
def test_which_header_refuses_a_handshake(
    hosts: list[str], origins: list[str], refused: str | None
) -> None:
    assert header_refusal(hosts, origins, ALLOWED, ("http://localhost:3000",)) == refused
