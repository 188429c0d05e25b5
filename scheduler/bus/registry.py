"""Who is connected under which name, and the secrets that prove a scheduler's identity.

Names are unique: a connected client or a scheduler the core still keeps jobs for (it
may come back) holds its name. A v2 scheduler is given a secret on its first
registration; only a registration presenting it may take over its name while it is
live. The secrets' hashes are journaled, so a restarted bus still knows them.
"""

from __future__ import annotations

from collections.abc import Iterator

from scheduler.auth import new_secret, secret_hash, secret_matches
from scheduler.bus.connection import Connection
from scheduler.bus.gate import FrameGate
from scheduler.bus.journal import Journal
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.protocol_types import Role


class Registry:
    """The registered connections by name, and the schedulers' secrets."""

    def __init__(self, core: Dispatcher) -> None:
        self._core = core
        self._clients: dict[str, Connection] = {}
        self._secrets: dict[str, str] = {}
        """Scheduler name -> hash of the secret that proves its identity."""
        self._generated: dict[str, int] = {}

    def get(self, name: str) -> Connection | None:
        """The connection registered as ``name``, if any."""
        return self._clients.get(name)

    def __iter__(self) -> Iterator[Connection]:
        """The registered connections, in registration order."""
        return iter(self._clients.values())

    def add(self, client: Connection) -> None:
        """Let ``client`` speak for its name (a connection it replaces no longer does)."""
        self._clients[client.name] = client

    def pop(self, name: str) -> Connection:
        """Forget the connection registered as ``name`` and return it."""
        return self._clients.pop(name)

    def current(self, client: Connection) -> bool:
        """Whether ``client`` still speaks for its name (not replaced, not expired)."""
        return self._clients.get(client.name) is client

    def unique_name(self, wanted: str | None, role: Role) -> str:
        """``wanted``, suffixed ``-2``, ``-3``... if taken; or the next free ``role-N``.

        A name is taken by a connected client or by a scheduler the core still keeps
        jobs for (it may come back).
        """
        if wanted is None:
            while True:
                n = self._generated[role] = self._generated.get(role, 0) + 1
                if not self._taken(f"{role}-{n}"):
                    return f"{role}-{n}"
        name, n = wanted, 1
        while self._taken(name):
            n += 1
            name = f"{wanted}-{n}"
        return name

    def _taken(self, name: str) -> bool:
        return name in self._clients or self._core.scheduler(name) is not None

    def scheduler_live(self, name: str) -> bool:
        """Whether a scheduler holds ``name``: connected, or kept by the core until its
        lease expires."""
        client = self._clients.get(name)
        connected = client is not None and client.role == "scheduler"
        return connected or self._core.scheduler(name) is not None

    def proves(self, name: str, secret: str | None) -> bool:
        """Whether ``secret`` is the one scheduler ``name`` was given."""
        return secret_matches(secret, self._secrets.get(name, ""))

    def issue_secret(self, name: str, journal: Journal, gate: FrameGate) -> str:
        """A new secret for scheduler ``name``; its hash is kept and journaled, and the
        frames sent from now on wait for that commit."""
        secret = new_secret()
        self._secrets[name] = hashed = secret_hash(secret)
        journal.save_secret(name, hashed)
        gate.changed()
        return secret

    def restore_secrets(self, journal: Journal) -> None:
        """Keep the secrets of the schedulers the restored core still waits for; forget
        the journal's others (their names are free)."""
        for name, hashed in journal.scheduler_secrets().items():
            if self._core.scheduler(name) is not None:
                self._secrets[name] = hashed
            else:
                journal.forget_secrets([name])
