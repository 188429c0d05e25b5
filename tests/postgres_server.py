"""The private PostgreSQL server the store tests share: one per session, a fresh
database per test. Without PostgreSQL installed the fixture fails (never skips), naming
how to install it: these tests must not pass silently in CI."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scheduler.bus.pg_server import PostgresMissing, PostgresServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the whole session, stopped by pid at its end."""
    try:
        server = PostgresServer()
    except PostgresMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """The DSN (``postgresql://schedbus@127.0.0.1:PORT/NAME``) of a fresh, empty
    database on the session's private server."""
    return postgres_server.create_database()
