"""The private PostgreSQL server the store tests run: unprivileged, loopback only,
durable, a fresh database per test, and stopped by pid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest

from scheduler.bus import pg_server
from scheduler.bus.pg_server import PostgresMissing, PostgresServer


def test_a_fresh_durable_database_on_loopback(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SHOW fsync").fetchone() == ("on",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)
    assert postgres_server.pid is not None
    server = psutil.Process(postgres_server.pid)
    assert server.uids().effective != 0 or os.geteuid() != 0
    assert all(c.laddr.ip == "127.0.0.1" for c in server.net_connections("inet"))
    # Detached: tests that count the processes below them never see it.
    assert server.pid not in {p.pid for p in psutil.Process().children(recursive=True)}


def test_each_test_has_its_own_database(postgres_server: PostgresServer) -> None:
    assert postgres_server.create_database() != postgres_server.create_database()


def test_stop_leaves_no_server() -> None:
    server = PostgresServer()
    server.start()
    pid = server.pid
    assert pid is not None
    server.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not server.root.exists()
    server.stop()


def test_missing_postgres_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg_server, "SERVER_GLOB", "/nonexistent/*/bin/postgres")
    with pytest.raises(PostgresMissing, match="scripts/setup"):
        PostgresServer()


def test_the_fixture_fails_without_postgres(tmp_path: Path) -> None:
    """Run as its own pytest, so that the failure is the child's, not this test's."""
    (tmp_path / "test_needs_pg.py").write_text(
        "from scheduler.bus import pg_server\n"
        "pg_server.SERVER_GLOB = '/nonexistent/*/bin/postgres'\n"
        "def test_needs(postgres_dsn):\n    pass\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "postgres_server", "-p", "no:cacheprovider", "-q"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(Path(__file__).parent)},
        timeout=30,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "PostgreSQL is not installed" in done.stdout
    assert "skipped" not in done.stdout
