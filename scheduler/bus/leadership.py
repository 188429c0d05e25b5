"""Several buses on one PostgreSQL journal: one leads, the others stand by.

``python -m scheduler.bus --store postgresql://...`` runs :func:`serve_elected`:

1. open a dedicated session for the leader lock (:class:`~.leadership_lock.LockSession`)
   and listen as a standby (:class:`~.leadership_standby.StandbyListener`): ``/healthz``,
   and every client refused with the leader's URL;
2. try the lock every ``retry_s`` (0.5 s); the bus that gets it bumps the epoch in
   ``schedbus_leader`` and names itself there (its ``--advertise`` URL); a standby
   that does not get it but finds the holder's lease run out (not renewed for
   ``--leader-lease`` seconds, by the database's clock: a frozen leader) ends the
   holder's sessions, which releases the lock for its next try;
3. stop the standby listener and start a :class:`~.server.BusServer` on the same port
   whose journal writes under that epoch: it reloads the non-final jobs as a restarted
   bus does, and its clients come back to it (they follow the standbys' answers);
4. watch the lock: the lock session's socket (an idle session is readable only when the
   server ends it), a check every ``check_s`` that renews the lease and must answer
   within ``check_timeout_s`` and find the epoch unchanged, and the journal refusing a
   write under a newer epoch (``StoreFenced``). Any of them, and the bus **exits at
   once** with status
   :data:`~scheduler.policy.leadership.EXIT_FENCED`, from inside the event loop's
   callback, without closing anything gracefully: a graceful close would commit and send
   what the core decided since, and nothing may be handed out once the lock is lost.
   Its clients see their connections drop and go to the new leader; a supervisor
   starts it again, as a standby.

The journal's epoch check is what makes this safe when the loss is noticed late: once
another bus has bumped the epoch, no write of the old leader commits, and the bus sends
an assignment only after the commit that journals it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Protocol

import psycopg

from scheduler.bus.config import BusConfig
from scheduler.bus.leadership_lock import LockSession
from scheduler.bus.leadership_standby import StandbyListener
from scheduler.bus.pg_store import PgStore, StoreFenced
from scheduler.bus.server import BusServer
from scheduler.policy.leadership import Leadership, StepDown

log = logging.getLogger(__name__)


class LeaderBus(Protocol):
    """What the election needs of the bus it starts once elected."""

    async def start(self) -> None:
        """Open the journal, reload its jobs, listen."""

    async def serve_forever(self) -> None:
        """Serve until cancelled."""

    def fenced(self) -> bool:
        """Whether the journal refused a write because another bus leads."""


MakeBus = Callable[[int, int], LeaderBus]
"""Builds the bus that leads: from the port to listen on and the epoch to write under."""


def exit_now(decision: StepDown) -> None:
    """Log why and end the process at once with the decision's status (see the module:
    no cleanup may send or commit anything more)."""
    log.critical("%s; exiting with status %d", decision.reason, decision.exit_code)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(decision.exit_code)


def listen_url(config: BusConfig, port: int) -> str:
    """The URL of a bus listening on ``config.host`` and ``port``, as a client reaches it."""
    host = config.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "ws" if config.certfile is None else "wss"
    return f"{scheme}://{host}:{port}"


class Election:
    """One bus's part in the election (see the module); ``step_down`` carries out a
    :class:`StepDown` (default: :func:`exit_now`)."""

    def __init__(
        self,
        config: BusConfig,
        dsn: str,
        make_bus: MakeBus,
        *,
        advertise: str | None = None,
        leadership: Leadership | None = None,
        step_down: Callable[[StepDown], None] = exit_now,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Prepare; nothing is opened until :meth:`run`."""
        self._config = config
        self._dsn = dsn
        self._make_bus = make_bus
        self._advertise = advertise
        self.leadership = leadership or Leadership(advertise or "")
        self._step_down = step_down
        self._clock = clock
        self._session: LockSession | None = None
        self.port: int | None = None
        """The port this bus listens on (once listening)."""

    async def run(self) -> None:
        """Stand by until elected, then lead until cancelled or fenced."""
        listener = StandbyListener(self._config, self.leadership)
        self.port = await listener.start()
        if not self._advertise:
            self.leadership.advertise = listen_url(self._config, self.port)
        log.info("bus standing by on %s (advertised as %s)", self.port, self.leadership.advertise)
        try:
            epoch = await self._stand_by()
            await listener.close()
            bus = self._make_bus(self.port, epoch)
            await bus.start()
            await self._lead(bus)
        finally:
            await listener.close()
            if self._session is not None:
                await self._session.close()

    async def _stand_by(self) -> int:
        """Try the lock every ``retry_s`` until it is won; return the epoch taken."""
        leadership = self.leadership
        while True:
            due = leadership.next_try()
            assert due is not None
            await asyncio.sleep(max(0.0, due - self._clock()))
            epoch = await self._try()
            if epoch is not None:
                log.info("%s leads under epoch %d", leadership.advertise, epoch)
                return epoch

    async def _try(self) -> int | None:
        """One try of the lock (reopening the session if it broke); the epoch taken if won.
        A session that fails meanwhile, even right after winning, is dropped (which
        releases the lock) and the next try opens another."""
        leadership = self.leadership
        try:
            session = await self._open_session()
            won = await session.try_lock()
            seen = await session.holder()
            if not leadership.tried(won, None if seen is None else seen[1], self._clock()):
                await self._maybe_depose(session, won)
                return None
            age = await session.lease_age()  # before the bump renews it
            epoch = await session.bump(leadership.advertise)
            promise = leadership.takeover_promise(time.time(), age)
            if promise is not None:
                await session.promise(promise)
            await session.lead()
        except psycopg.Error as exc:
            log.warning("cannot try the leader lock: %s", exc)
            await self._drop_session()
            leadership.tried(False, None, self._clock())
            return None
        leadership.elected(epoch, self._clock())
        return epoch

    async def _maybe_depose(self, session: LockSession, won: bool) -> None:
        """End the holder's sessions if its lease ran out (it is frozen, or cut off)."""
        age = await session.lease_age()
        if self.leadership.should_depose(won, age, self._clock()):
            pids = await session.depose()
            log.warning(
                "the leader's lease was not renewed for %.1f s (more than %.1f s):"
                " ended its sessions %s to take the lead",
                age,
                self.leadership.lease_s,
                pids,
            )

    @property
    def session(self) -> LockSession | None:
        """The open lock session (None while there is none)."""
        return self._session

    async def _open_session(self) -> LockSession:
        if self._session is None:
            self._session = await LockSession.open(self._dsn)
        return self._session

    async def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await asyncio.gather(session.close(), return_exceptions=True)

    async def _lead(self, bus: LeaderBus) -> None:
        """Serve ``bus`` while watching the lock; step down on the first loss."""
        serving = asyncio.ensure_future(bus.serve_forever())
        try:
            await self._watch(bus, serving)
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)

    async def _watch(self, bus: LeaderBus, serving: asyncio.Future[None]) -> None:
        """Check the lock every ``check_s`` and watch its session in between, until
        ``serving`` ends (its error is raised) or the bus steps down."""
        session = self._session
        assert session is not None
        leadership = self.leadership

        def lost() -> None:
            self._step_down(leadership.lost("lock_lost"))

        while not serving.done():
            session.watch(lost)
            due = leadership.next_check()
            if due is None:
                return
            sleeper = asyncio.ensure_future(asyncio.sleep(max(0.0, due - self._clock())))
            await asyncio.wait({sleeper, serving}, return_when=asyncio.FIRST_COMPLETED)
            sleeper.cancel()
            if serving.done():
                break
            decision = leadership.lost("store_fenced") if bus.fenced() else None
            decision = decision or await self._check(session)
            if decision is not None:
                self._step_down(decision)
                return
        await serving

    async def _check(self, session: LockSession) -> StepDown | None:
        """Run one check of the lock session, which renews the lease; the step-down it
        calls for, if any."""
        leadership = self.leadership
        assert leadership.epoch is not None
        started = self._clock()
        try:
            renewed = await asyncio.wait_for(
                session.renew(leadership.epoch), leadership.check_timeout_s
            )
            ok = True
        except (psycopg.Error, TimeoutError) as exc:
            log.error("the leader lock's session failed a check: %s", exc)
            renewed = ok = False
        now = self._clock()
        decision = leadership.checked(ok, now - started, now)
        if decision is None and not renewed:
            decision = leadership.lost("deposed")
        return decision


class ElectedServer:
    """A :class:`BusServer` as the election runs it (:class:`LeaderBus`)."""

    def __init__(self, server: BusServer) -> None:
        """Wrap ``server``, not started."""
        self.server = server

    async def start(self) -> None:
        """Open the journal under the epoch, reload its jobs, listen."""
        await self.server.start()

    async def serve_forever(self) -> None:
        """Serve until cancelled (which closes the bus)."""
        await self.server.serve_forever()

    def fenced(self) -> bool:
        """Whether the journal refused a write because another bus bumped the epoch."""
        return isinstance(self.server.journal.failure, StoreFenced)


def migrate(dsn: str) -> None:
    """Create or upgrade the journal's schema at ``dsn`` (with its ``schedbus_leader``
    row, which the lock session reads) and close it again. Raises JournalError."""
    PgStore(dsn, epoch=0).close()


async def serve_elected(config: BusConfig) -> None:
    """Stand by, lead once elected, until cancelled or fenced (see the module): the bus of
    ``python -m scheduler.bus --store``, named to clients as ``config.advertise``.
    Raises JournalError if the schema cannot be migrated, OSError if the address cannot
    be bound."""
    dsn = config.store
    if dsn is None:
        raise ValueError("serve_elected needs a config with a store")
    await asyncio.to_thread(migrate, dsn)

    def make_bus(port: int, epoch: int) -> LeaderBus:
        leader = dataclasses.replace(config, port=port, leader_epoch=epoch)
        return ElectedServer(BusServer(leader))

    leadership = Leadership(config.advertise or "", lease_s=config.leader_lease)
    await Election(config, dsn, make_bus, advertise=config.advertise, leadership=leadership).run()
