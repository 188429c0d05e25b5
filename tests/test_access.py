"""Who may register as what and send which command, decided without sockets."""

from __future__ import annotations

import pytest

from scheduler.auth import Token, TokenTable
from scheduler.codec import ProtocolError
from scheduler.policy.access import (
    Grant,
    authenticate,
    is_loopback,
    owner_filter,
    rights_refusal,
    send_refusal,
)
from scheduler.protocol import Cancel, Heartbeat, Register, Report, SubmitMany, Watch
from scheduler.protocol_queries import GetStats, Vacuum

TOKENS = TokenTable(
    (
        Token("alice", "producer", "t-alice"),
        Token("watcher", "monitor", "t-monitor"),
        Token("runner", "scheduler", "t-scheduler"),
        Token("ops", "admin", "t-admin"),
    )
)


def decide(
    register: Register,
    tokens: TokenTable | None = TOKENS,
    v1: bool = True,
    peer_host: str = "127.0.0.1",
    has_origin: bool = False,
) -> Grant | ProtocolError:
    return authenticate(register, tokens, v1=v1, peer_host=peer_host, has_origin=has_origin)


def refusal(result: Grant | ProtocolError) -> tuple[str | None, str]:
    assert isinstance(result, ProtocolError), result
    return result.field, result.message


def test_a_token_grants_its_role_and_names_the_owner() -> None:
    assert decide(Register("producer", 2, token="t-alice")) == Grant("producer", "alice")
    assert decide(Register("producer", 2, token="t-monitor")) == Grant("monitor", "watcher")
    for kind in ("producer", "scheduler", "monitor"):
        assert decide(Register(kind, 2, token="t-admin")) == Grant("admin", "ops")
    assert refusal(decide(Register("monitor", 2, token="t-scheduler"))) == (
        "type",
        "a scheduler token may not register as a monitor; only as a scheduler",
    )
    assert refusal(decide(Register("producer", 2, token="t-alic"))) == ("token", "invalid token")
    assert refusal(decide(Register("producer", 2))) == (
        "token",
        "token required: this bus accepts only clients with a token",
    )
    # A v1-shaped register that sends a token is checked like any other.
    assert decide(Register("scheduler", 1, token="t-scheduler")) == Grant("scheduler", "runner")


def test_without_tokens_everyone_is_let_in() -> None:
    assert decide(Register("scheduler", 2), tokens=None) == Grant()
    assert decide(Register("producer", 1), tokens=None, peer_host="192.0.2.9") == Grant()
    assert refusal(decide(Register("producer", 1), tokens=None, v1=False))[0] == "token"


@pytest.mark.parametrize("peer_host", ["127.0.0.1", "::1", "127.5.6.7", "::ffff:127.0.0.1"])
def test_a_tokenless_v1_client_from_loopback_acts_with_its_type(peer_host: str) -> None:
    assert decide(Register("producer", 1), peer_host=peer_host) == Grant("producer", "v1")
    assert decide(Register("scheduler", 1), peer_host=peer_host) == Grant("scheduler", "v1")


@pytest.mark.parametrize(
    ("v1", "peer_host", "has_origin", "why"),
    [
        (False, "127.0.0.1", False, "v1 clients are refused here (--no-v1)"),
        (True, "192.0.2.9", False, "accepted only from loopback"),
        (True, "::ffff:192.0.2.9", False, "accepted only from loopback"),
        (True, "", False, "accepted only from loopback"),
        (True, "127.0.0.1", True, "accepted only without an Origin header"),
    ],
)
def test_a_tokenless_v1_client_is_refused_elsewhere(
    v1: bool, peer_host: str, has_origin: bool, why: str
) -> None:
    result = decide(Register("producer", 1), v1=v1, peer_host=peer_host, has_origin=has_origin)
    field, message = refusal(result)
    assert field == "token" and why in message


def test_rights_per_role() -> None:
    assert rights_refusal(None, Vacuum()) is None  # a bus without tokens
    assert rights_refusal("admin", Vacuum()) is None
    assert rights_refusal("producer", Vacuum()) == (
        "a producer token may not send vacuum; only an admin token may"
    )
    assert rights_refusal("monitor", Watch(ids=["x"])) is None
    assert rights_refusal("monitor", GetStats()) is None
    assert rights_refusal("monitor", Cancel(id="x")) == (
        "a monitor token may not send cancel; only a producer or admin token may"
    )
    assert rights_refusal("producer", Report("succeeded", "x", 1)) is not None


def test_a_client_sends_only_what_its_type_and_protocol_allow() -> None:
    assert send_refusal(None, 2, None, GetStats()) == "register first"
    assert send_refusal("scheduler", 2, None, Cancel(id="x")) == (
        "a scheduler may not send cancel; only a producer or monitor may"
    )
    assert send_refusal("monitor", 2, None, Report("succeeded", "x", 1)) == (
        "a monitor may not send report; only a scheduler may"
    )
    assert send_refusal("producer", 1, None, SubmitMany(jobs=[])) == "this cmd needs protocol 2"
    assert send_refusal("producer", 1, None, Cancel(id="x")) == "this cmd needs protocol 2"
    assert send_refusal("scheduler", 1, None, Heartbeat(running=0, queued=0)) is None
    assert send_refusal("monitor", 2, "monitor", Vacuum()) == (
        "a monitor token may not send vacuum; only an admin token may"
    )
    assert send_refusal("monitor", 2, "admin", Vacuum()) is None


def test_only_a_producer_token_is_limited_to_its_own_jobs() -> None:
    assert owner_filter(Grant("producer", "alice")) == "alice"
    assert owner_filter(Grant("producer", "v1")) == "v1"
    assert owner_filter(Grant("admin", "ops")) is None
    assert owner_filter(Grant("monitor", "watcher")) is None
    assert owner_filter(Grant()) is None


def test_loopback_names_and_addresses() -> None:
    assert is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")
