"""Who may register as what, and which client may send which command. No I/O.

The bus asks :func:`authenticate` about every ``register`` and :func:`send_refusal`
about every later frame (its client type, protocol and token role); ownership of jobs
(a producer acts only on its own) is the dispatch core's rule
(:func:`scheduler.policy.job.not_yours`), fed by :attr:`Grant.owner` and
:func:`owner_filter`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import msgspec

from scheduler.codec import ProtocolError
from scheduler.protocol import Cancel, Heartbeat, JobRequest, Register, Report, SubmitMany, Watch
from scheduler.protocol_queries import GetStats, ListJobs, Retry, Vacuum
from scheduler.protocol_schedules import ScheduleAdd, ScheduleChange, ScheduleQuery
from scheduler.protocol_types import Role

if TYPE_CHECKING:  # the token file's module does I/O; the rules need only its types
    from scheduler.auth import TokenRole, TokenTable

ROLES_FOR: Final[dict[type, tuple[Role, ...]]] = {
    JobRequest: ("producer",),
    SubmitMany: ("producer",),
    Cancel: ("producer", "monitor"),
    Watch: ("producer", "monitor"),
    Vacuum: ("producer", "monitor"),
    GetStats: ("producer", "monitor"),
    ListJobs: ("producer", "monitor"),
    Retry: ("producer", "monitor"),
    Report: ("scheduler",),
    Heartbeat: ("scheduler",),
    ScheduleAdd: ("producer", "monitor"),
    ScheduleChange: ("producer", "monitor"),
    ScheduleQuery: ("producer", "monitor"),
}
"""Which client type may send each command (``register`` is for anyone not registered)."""

V2_ONLY: Final = frozenset(
    {
        SubmitMany,
        Cancel,
        Watch,
        Vacuum,
        GetStats,
        ListJobs,
        Retry,
        ScheduleAdd,
        ScheduleChange,
        ScheduleQuery,
    }
)
"""The commands a client registered with protocol 1 may not send."""

RIGHTS_FOR: Final[dict[type, tuple[TokenRole, ...]]] = {
    JobRequest: ("producer", "admin"),
    SubmitMany: ("producer", "admin"),
    Cancel: ("producer", "admin"),
    Watch: ("producer", "monitor", "admin"),
    Vacuum: ("admin",),
    GetStats: ("producer", "monitor", "admin"),
    ListJobs: ("producer", "monitor", "admin"),
    Retry: ("producer", "admin"),
    Report: ("scheduler", "admin"),
    Heartbeat: ("scheduler", "admin"),
    ScheduleAdd: ("admin",),
    ScheduleChange: ("admin",),
    ScheduleQuery: ("monitor", "admin"),
}
"""Which token role may send each command (on a bus with tokens). A producer's cancel,
retry, watch and list are further limited to its own jobs."""

TYPES_FOR_TOKEN: Final[dict[TokenRole, tuple[Role, ...]]] = {
    "producer": ("producer",),
    "scheduler": ("scheduler",),
    "monitor": ("monitor", "producer"),
    "admin": ("producer", "scheduler", "monitor"),
}
"""Which client types a token of each role may register as. A monitor token may also
register as a producer-type connection, which gets only the events it watches (the
``status`` command): its token still lets it only read."""

V1_OWNER: Final = "v1"
"""The owner recorded on jobs submitted by a tokenless v1 producer."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a registered client may do: the role of its token (None on a bus without
    tokens: what its client type may) and the owner recorded on the jobs it submits."""

    rights: TokenRole | None = None
    owner: str | None = None


def authenticate(
    register: Register,
    tokens: TokenTable | None,
    *,
    v1: bool,
    peer_host: str,
    has_origin: bool,
) -> Grant | ProtocolError:
    """Decide a ``register`` from ``peer_host`` (an IP address; ``has_origin``: the
    handshake carried an ``Origin`` header): the client's :class:`Grant`, or the error
    that refuses it, naming ``token`` or ``type``.

    With ``tokens``, its token must be one of them and its role must allow the registered
    type (:data:`TYPES_FOR_TOKEN`). A tokenless v1 register is accepted if ``v1``, and on
    a bus with tokens only from loopback and without ``Origin``: it acts with its type's
    role, as owner :data:`V1_OWNER`. Without ``tokens`` anyone else is let in.
    """
    if register.token is None and register.protocol == 1:
        refusal = v1_refusal(tokens, v1=v1, peer_host=peer_host, has_origin=has_origin)
        if refusal is not None:
            return ProtocolError(refusal, "token")
        return Grant() if tokens is None else Grant(register.type, V1_OWNER)
    if tokens is None:
        return Grant()
    if register.token is None:
        return ProtocolError("token required: this bus accepts only clients with a token", "token")
    entry = tokens.find(register.token)
    if entry is None:
        return ProtocolError("invalid token", "token")
    types = TYPES_FOR_TOKEN[entry.role]
    if register.type not in types:
        return ProtocolError(
            f"a {entry.role} token may not register as a {register.type}; only as a"
            f" {' or '.join(types)}",
            "type",
        )
    return Grant(entry.role, entry.name)


def v1_refusal(
    tokens: TokenTable | None, *, v1: bool, peer_host: str, has_origin: bool
) -> str | None:
    """Why a tokenless v1 client may not register, or None if it may."""
    if not v1:
        return "v1 clients are refused here (--no-v1); send a token with protocol 2"
    if tokens is None:
        return None
    if not is_loopback(peer_host):
        return "a v1 client without a token is accepted only from loopback"
    if has_origin:
        return "a v1 client without a token is accepted only without an Origin header"
    return None


def send_refusal(
    role: Role | None, protocol: int, rights: TokenRole | None, message: object
) -> str | None:
    """Why a client registered as ``role`` (None: not registered yet) with ``protocol``
    and token role ``rights`` may not send ``message`` (a decoded client message other
    than ``register``), or None if it may."""
    if role is None:
        return "register first"
    roles = ROLES_FOR[type(message)]
    if role not in roles:
        cmd = _cmd(message)
        return f"{_a(role)} may not send {cmd}; only {_a(' or '.join(roles))} may"
    if protocol != 2 and type(message) in V2_ONLY:
        return "this cmd needs protocol 2"
    return rights_refusal(rights, message)


def rights_refusal(rights: TokenRole | None, message: object) -> str | None:
    """Why a client whose token has role ``rights`` may not send ``message`` (a decoded
    client message other than ``register``), or None if it may (always on a bus without
    tokens: ``rights`` None)."""
    allowed = RIGHTS_FOR[type(message)]
    if rights is None or rights in allowed:
        return None
    return (
        f"{_a(rights)} token may not send {_cmd(message)};"
        f" only {_a(' or '.join(allowed))} token may"
    )


def _cmd(message: object) -> str:
    """The ``cmd`` tag of client message ``message``."""
    assert isinstance(message, msgspec.Struct)
    return str(message.__struct_config__.tag)


def _a(words: str) -> str:
    """``words`` after the indefinite article that goes with it (roles: a producer, an
    admin)."""
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def owner_filter(grant: Grant) -> str | None:
    """Whose jobs a client may cancel, retry, watch and list: a producer token's only its
    own (its owner name); None: any job."""
    return grant.owner if grant.rights == "producer" else None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP address) is this machine's loopback; an
    IPv4-mapped IPv6 address (a dual-stack listener's peer) counts as its IPv4 address."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
