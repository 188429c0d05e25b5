"""A private PostgreSQL server for the tests and the bench: Debian's server binaries,
run as an unprivileged user on a fresh data directory, reachable only on 127.0.0.1
(an ephemeral port) and a unix socket in its own temporary directory.

Not used by the bus itself: the bus connects to whatever server its ``--store`` names.
The server keeps ``fsync`` on, so what it measures is what a real deployment pays for a
durable commit.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Final

import psutil

SERVER_GLOB: Final = "/usr/lib/postgresql/*/bin/postgres"
"""Where Debian's ``postgresql`` package puts the server binary (one per major version)."""

SERVER_USER: Final = "postgres"
"""The system user the server runs as when we are root (``initdb`` refuses root)."""

DB_USER: Final = "schedbus"
"""The database superuser of the private server (trust authentication: it is local)."""

START_TIMEOUT_S: Final = 60.0
"""How long the server may take to accept connections before starting it fails."""


class PostgresMissing(RuntimeError):
    """PostgreSQL's server binaries are not installed here."""


def server_bin() -> Path:
    """The ``bin`` directory of the newest installed PostgreSQL; raise
    :class:`PostgresMissing` saying how to install it."""
    found = sorted(glob.glob(SERVER_GLOB), key=_major_version)
    if not found:
        raise PostgresMissing(
            f"PostgreSQL is not installed (no {SERVER_GLOB}): run scripts/setup, which"
            " installs Debian's postgresql package, or apt-get install postgresql"
        )
    return Path(found[-1]).parent


def _major_version(path: str) -> int:
    """The major version in ``/usr/lib/postgresql/VERSION/bin/postgres``."""
    version = Path(path).parent.parent.name
    return int(version) if version.isdigit() else 0


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresServer:
    """One private PostgreSQL server; :meth:`start` it, :meth:`stop` it (by pid).

    Usable as a context manager. :meth:`create_database` gives each user a fresh,
    empty database and its DSN.
    """

    def __init__(self) -> None:
        """Prepare (not start) a server in a new private temporary directory."""
        self.bin = server_bin()
        self.root = Path(tempfile.mkdtemp(prefix="schedbus-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.pid: int | None = None
        """The server's (postmaster's) pid while it runs."""
        self._as_user = os.geteuid() == 0
        self._databases = 0

    def __enter__(self) -> PostgresServer:
        """Start the server."""
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server and remove its directory."""
        self.stop()

    @property
    def host(self) -> str:
        """The unix socket directory (a libpq ``host`` that starts with ``/``)."""
        return str(self.root)

    def dsn(self, database: str = "postgres") -> str:
        """The TCP DSN of ``database`` on this server."""
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Create the data directory and start the server; return once it accepts
        connections. Raise RuntimeError with the server's log if it does not."""
        if self._as_user:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            DB_USER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            # Only initdb's own files skip their fsync; the server below keeps fsync on.
            "--no-sync",
        )
        self.port = _free_port()
        # pg_ctl starts the server detached (it is reparented away from us once pg_ctl
        # exits): tests that count their own child processes must not see it.
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1"
            f" -c unix_socket_directories={self.root} -c fsync=on"
            " -c max_connections=60 -c shared_buffers=32MB"
        )
        try:
            self._run(
                "pg_ctl", "start", "-w", "-t", str(int(START_TIMEOUT_S)), "-D", str(self.data),
                "-l", str(self.log), "-o", options,
            )  # fmt: skip
            self.pid = self._pid_file()
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            self.stop()
            raise RuntimeError(
                f"the private PostgreSQL server did not start: {exc}\n{log}"
            ) from exc

    def _pid_file(self) -> int | None:
        """The pid in the server's ``postmaster.pid``, if it wrote one."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @property
    def _user(self) -> str | None:
        """The user the server's processes run as: :data:`SERVER_USER` when we are root,
        else None (ourselves)."""
        return SERVER_USER if self._as_user else None

    def _run(self, tool: str, *args: str) -> None:
        """Run one of the server's tools to completion; raise RuntimeError with its output."""
        done = subprocess.run(
            [str(self.bin / tool), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            timeout=START_TIMEOUT_S,
            user=self._user,
            group=self._user,
            extra_groups=None if self._user is None else [],
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise RuntimeError(f"PostgreSQL {tool} failed ({done.returncode}): {output}")

    def create_database(self) -> str:
        """A fresh empty database on this server; return its DSN."""
        import psycopg

        self._databases += 1
        name = f"t{os.getpid()}_{self._databases}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        """Stop the server at once (``pg_ctl stop -m immediate``, then SIGKILL by pid if
        it is still there) and remove its directory. Idempotent."""
        pid, self.pid = self.pid or self._pid_file(), None
        if pid is not None and _alive(pid):
            try:
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass  # killed below
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                psutil.wait_procs([psutil.Process(pid)], timeout=START_TIMEOUT_S)
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
