"""A client's session on the bus: its registration (token, name, scheduler identity) and
its end.

A ``register`` is checked against the tokens (:func:`scheduler.policy.access.authenticate`),
then the client gets a unique name; a scheduler (re)attaches to the core under its name,
proving with its secret that a live name is its own. A registration that journals
nothing (a producer's, a monitor's, a scheduler's that reattaches with its secret, a
refused one) is answered at once, not behind the journal's commits: a client that
connects while the journal fails still hears that it is registered, then why its submit
is refused. When a connection closes, its subscriptions go, and a scheduler's jobs go
back to dispatch or wait for its lease.
"""

from __future__ import annotations

import logging
from typing import Final

from websockets.frames import CloseCode

from scheduler.bus.connection import CLEAN_CLOSE, Connection
from scheduler.bus.hub import Hub
from scheduler.codec import ProtocolError
from scheduler.policy.access import authenticate
from scheduler.policy.dispatch.decisions import Requeued, SendStop
from scheduler.protocol import Register, Registered
from scheduler.protocol_types import Role

# The bus's log lines keep the one logger name its users and tests filter on.
logger = logging.getLogger("scheduler.bus.server")

CLOSE_REPLACED: Final = 4001
"""Close code for a scheduler connection replaced by a newer one with its name."""


class Sessions:
    """Registers clients and lets them leave."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._closing = False

    def closing(self) -> None:
        """The bus is shutting down: schedulers that leave from now on keep their jobs."""
        self._closing = True

    def register(self, client: Connection, message: Register, frame: str) -> None:
        """Check the token, then give ``client`` its role and name; a scheduler
        (re)attaches and gets work. A refused client is marked to be closed."""
        if client.role is not None:
            client.refuse(ProtocolError("already registered", "cmd"), frame)
            return
        refusal = self._authenticate(client, message)
        if refusal is None and message.type == "scheduler":
            refusal = self._register_scheduler(client, message)
            if refusal is None:
                return
        if refusal is not None:
            client.refuse(refusal, frame)
            client.close = (CloseCode.POLICY_VIOLATION, f"registration refused: {refusal.field}")
            return
        registry = self._hub.registry
        client.become(registry.unique_name(message.name, message.type), *_kind(message))
        registry.add(client)
        if message.protocol == 2:
            client.send_now(Registered(name=client.name, batch=True))
            if message.type == "monitor":
                self._hub.fanout.add_monitor(client)
        logger.info(
            "%s: registered as %s (protocol %d)", client.peer, client.name, message.protocol
        )

    def leave(self, client: Connection) -> None:
        """Forget ``client``; a scheduler's jobs go back to dispatch or wait for its lease."""
        hub = self._hub
        hub.fanout.leave(client)
        if client.role is None:
            logger.info("%s: disconnected", client.peer)
            return
        if not hub.registry.current(client):
            logger.info("%s: old connection closed (%s)", client.name, client.peer)
            return
        hub.registry.pop(client.name)
        if client.role != "scheduler" or self._closing:
            logger.info("%s: left (%s)", client.name, client.peer)
            return
        clean = client.ws.close_code in CLEAN_CLOSE
        decisions = hub.core.detach(client.name, clean=clean, now=hub.clock(), wall=hub.wall())
        info = hub.core.scheduler(client.name)
        keeps = "" if info is None else f"; keeps {info.outstanding} jobs until its lease expires"
        requeued = sum(isinstance(d, Requeued) for d in decisions)
        how = "cleanly" if clean else f"abnormally ({client.ws.close_code})"
        logger.info(
            "%s: left %s (%s, %d jobs requeued%s)", client.name, how, client.peer, requeued, keeps
        )
        hub.apply(decisions)

    def _authenticate(self, client: Connection, message: Register) -> ProtocolError | None:
        """Give ``client`` what its token grants (:func:`authenticate`), or say why it
        is refused."""
        address = client.ws.remote_address
        request = client.ws.request
        config = self._hub.config
        grant = authenticate(
            message,
            config.tokens,
            v1=config.v1,
            peer_host=str(address[0]) if isinstance(address, tuple) else "",
            has_origin=request is not None and "Origin" in request.headers,
        )
        if isinstance(grant, ProtocolError):
            return grant
        client.grant = grant
        return None

    def _register_scheduler(self, client: Connection, message: Register) -> ProtocolError | None:
        """Attach a scheduler under its name, or say why the name is refused.

        A v2 name held by a live scheduler (connected, or keeping jobs until its lease
        expires) is taken over only by a registration that proves it is that scheduler,
        with the secret its first registration was given; its old connection is closed.
        A free name gets a new secret, journaled before the reply leaves (while the
        journal fails, that reply waits for it); a scheduler that reattaches with its
        secret journals nothing and is answered at once.
        """
        hub, registry = self._hub, self._hub.registry
        v2 = message.protocol == 2
        name = message.name if v2 else None
        old = None if name is None else registry.get(name)
        if name is None or (old is not None and old.role != "scheduler"):
            name = registry.unique_name(name, "scheduler")
        elif registry.scheduler_live(name):
            if not registry.proves(name, message.secret):
                return ProtocolError(f"name {name} is in use by another scheduler", "name")
            if old is not None:
                logger.warning("%s: a new connection (%s) takes over its name", name, client.peer)
                hub.spawn(old.ws.close(CLOSE_REPLACED, "replaced by a newer connection"))
        client.become(name, *_kind(message))
        client.outbox.bound = None
        registry.add(client)
        held = (message.held or []) if v2 else []
        known = hub.core.scheduler(name) is not None
        if v2:
            kept = message.secret if known else None
            secret = kept or registry.issue_secret(name, hub.journal, hub.gate)
            registered = Registered(
                name=name, lease_s=hub.config.rules.lease, secret=secret, batch=True
            )
            if kept:
                client.send_now(registered)
            else:
                client.send(registered)
        decisions = hub.core.attach(
            name,
            size=message.size if v2 else None,
            tasks=message.tasks if v2 else None,
            priorities=message.priorities if v2 else None,
            reports=v2,
            held=held,
            now=hub.clock(),
            wall=hub.wall(),
        )
        logger.info(
            "%s: registered as %s (protocol %d, %s; %d attempts held, %d told to stop,"
            " %d jobs requeued)",
            client.peer,
            name,
            message.protocol,
            "reattached" if known else "new",
            len(held),
            sum(isinstance(d, SendStop) for d in decisions),
            sum(isinstance(d, Requeued) for d in decisions),
        )
        hub.apply(decisions)
        return None


def _kind(message: Register) -> tuple[Role, int, bool, bool]:
    """The role, protocol, batching and held assignments a ``register`` asks for."""
    return message.type, message.protocol, message.batch, message.hold
