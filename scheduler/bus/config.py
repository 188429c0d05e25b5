"""The bus's configuration: where it listens, whom it lets in, where it journals, and the
dispatch rules it runs (a :class:`~scheduler.policy.dispatch.DispatchConfig` it holds).

Every default is defined once: the rules' in :mod:`scheduler.policy.dispatch`, the
bus's own here; ``python -m scheduler.bus`` takes its option defaults from both.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from scheduler.auth import TokenTable
from scheduler.bus.outbox import DEFAULT_MAX_BACKLOG_BYTES, DEFAULT_MAX_TOTAL_BACKLOG_BYTES
from scheduler.bus.store import check_store
from scheduler.policy.access import is_loopback
from scheduler.policy.commit_window import DEFAULT_COMMIT_WINDOW_S, check_window
from scheduler.policy.dispatch.config import (
    DEFAULT_RESTART_GRACE_S,
    DEFAULT_START_DEADLINE_S,
    DispatchConfig,
)
from scheduler.policy.leadership import (
    DEFAULT_CHECK_S,
    DEFAULT_CHECK_TIMEOUT_S,
    DEFAULT_LEADER_LEASE_S,
    check_lease,
)
from scheduler.protocol_types import FINAL_EVENTS, MAX_TIMEOUT_S

DEFAULT_HOST: Final = "127.0.0.1"
"""The address the bus listens on unless told otherwise: loopback only."""

DEFAULT_PORT: Final = 8101
"""The port the bus listens on unless told otherwise."""

DEFAULT_REGISTER_TIMEOUT_S: Final = 5.0
"""Seconds a connection has to register before it is closed."""

DEFAULT_MAX_CONNECTIONS: Final = 1000
"""Open connections past which new ones are refused (HTTP 503)."""

DEFAULT_RETENTION_S: Final = 7 * 24 * 3600.0
"""How long a final job stays in the journal unless a retention says otherwise."""

DEFAULT_VACUUM_EVERY_S: Final = 3600.0
"""Seconds between two deletions of the final jobs past their retention."""

BUS_RULES: Final = DispatchConfig(start_deadline=DEFAULT_START_DEADLINE_S)
"""The dispatch rules a bus runs unless told otherwise: the core's defaults, with the
start deadline on."""


def bus_rules(**changes: Any) -> DispatchConfig:
    """:data:`BUS_RULES` with ``changes`` (fields of :class:`DispatchConfig`); raises
    ValueError naming a field whose value the rules cannot work with."""
    return dataclasses.replace(BUS_RULES, **changes)


@dataclass(frozen=True)
class BusConfig:
    """Where the bus listens, whom it lets in, where it journals and the rules it runs.

    ``tokens``: the tokens clients must present (None: no tokens, everyone may do what
    its client type may, as before tokens existed; the ``python -m scheduler.bus``
    command always has tokens). ``v1``: accept tokenless v1 clients (from a loopback
    peer with no ``Origin`` header, when there are tokens). ``certfile``/``keyfile``:
    serve TLS (``wss://``). Listening beyond loopback without TLS is refused unless
    ``insecure``.

    ``db`` is the journal file (``:memory:``: none, jobs die with the bus). ``rules``
    are the dispatch core's numbers (lease, evictions, deliveries, steal strategy,
    aging, start deadline; see :func:`bus_rules`). ``retention`` maps a final state to
    the seconds its jobs are kept (others: ``retention_default``); final jobs past it
    are deleted every ``vacuum_every`` seconds.

    Memory and connection bounds: a producer or monitor with more than
    ``max_backlog_bytes`` of frames waiting to be written is disconnected, and when all
    clients together pass ``max_total_backlog_bytes`` the one with the largest backlog
    goes first; a connection that has not registered within ``register_timeout`` seconds
    is closed; past ``max_connections`` open connections, new ones are refused (503).
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    tokens: TokenTable | None = None
    v1: bool = True
    certfile: str | None = None
    keyfile: str | None = None
    insecure: bool = False
    allow_origins: tuple[str, ...] = ()
    db: str = ":memory:"
    store: str | None = None
    """A PostgreSQL URL (``postgresql://...``) to journal in instead of ``db``."""
    advertise: str | None = None
    """With ``store``: the URL clients reach this bus at, which standbys name while it
    leads (None: the URL it listens on)."""
    leader_epoch: int | None = None
    """With ``store``: the leader epoch this bus won (:mod:`scheduler.bus.leadership`);
    every journal write is refused once the database's epoch is another."""
    leader_lease: float = DEFAULT_LEADER_LEASE_S
    """With ``store``: seconds the leader's lease lasts unrenewed before a standby
    deposes it (a frozen leader); see :mod:`scheduler.policy.leadership`."""
    rules: DispatchConfig = BUS_RULES
    retention: Mapping[str, float] = field(default_factory=dict)
    retention_default: float = DEFAULT_RETENTION_S
    vacuum_every: float = DEFAULT_VACUUM_EVERY_S
    restart_grace: float = DEFAULT_RESTART_GRACE_S
    """Seconds a bus shutting down (:meth:`BusServer.close`) promises its v2 schedulers
    their jobs, which the restarted bus honours; 0: no promise (their lease only)."""
    max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES
    max_total_backlog_bytes: int = DEFAULT_MAX_TOTAL_BACKLOG_BYTES
    register_timeout: float = DEFAULT_REGISTER_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    commit_window: float = DEFAULT_COMMIT_WINDOW_S
    """Seconds a commit that only job events wait for may wait for more changes, under
    load (see :mod:`scheduler.policy.commit_window`); 0: every commit starts at once."""

    def __post_init__(self) -> None:
        """Refuse values that cannot work, naming the field."""
        if not 0 <= self.restart_grace <= MAX_TIMEOUT_S:
            raise ValueError(
                f"restart_grace must be 0 to {MAX_TIMEOUT_S:g} s, not {self.restart_grace}"
            )
        for name in ("max_backlog_bytes", "max_total_backlog_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if not self.register_timeout > 0:
            raise ValueError(f"register_timeout must be > 0 s, not {self.register_timeout}")
        check_window(self.commit_window)
        if not self.vacuum_every > 0:
            raise ValueError(f"vacuum_every must be > 0 s, not {self.vacuum_every}")
        unknown = set(self.retention) - FINAL_EVENTS
        if unknown:
            raise ValueError(f"retention: not final states: {', '.join(sorted(unknown))}")
        if min([self.retention_default, *self.retention.values()]) < 0:
            raise ValueError("retention: seconds must be >= 0")
        check_store(self.store)
        check_lease(self.leader_lease, DEFAULT_CHECK_S + DEFAULT_CHECK_TIMEOUT_S, "leader_lease")
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile needs a certfile")
        if not is_loopback(self.host) and self.certfile is None and not self.insecure:
            raise ValueError(
                f"host {self.host} is not loopback: serve TLS (certfile, keyfile) or accept"
                " that tokens and jobs cross the network in clear (insecure)"
            )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server TLS context for ``certfile``/``keyfile``, or None without TLS.
        Raises OSError or ssl.SSLError if they cannot be loaded."""
        if self.certfile is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certfile, self.keyfile)
        return context
