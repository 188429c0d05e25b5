"""What only the PostgreSQL store has: ``--store`` on the command line, its errors (bad
URL, unreachable server, a second bus), a lost server connection on a serving bus,
acknowledgment after commit across a SIGKILL, and fencing by the leader epoch."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import closing, contextmanager
from urllib.parse import urlsplit

import msgspec
import psycopg
import pytest
from conftest import BusProcess, Commands, unit, wait_until
from dashboard_helpers import get
from test_bus import bus_with, client, register, request, submit
from test_journal import make_job

from scheduler.bus.journal import Journal, JournalError
from scheduler.bus.pg_schema import SCHEMA_VERSION
from scheduler.bus.pg_server import PostgresServer
from scheduler.bus.pg_store import BUS_LOCK, StoreFenced
from scheduler.bus.store import check_store, redact
from scheduler.policy.schedules import ScheduleState
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobPayload
from scheduler.protocol_schedules import ScheduleSpec

pytestmark = pytest.mark.timeout(90)


def with_password(dsn: str, password: str) -> str:
    """``dsn`` with ``password`` in its URL (trust authentication ignores it)."""
    parts = urlsplit(dsn)
    return parts._replace(netloc=f"schedbus:{password}@{parts.hostname}:{parts.port}").geturl()


def test_redact_hides_the_password_wherever_it_is() -> None:
    assert redact("postgresql://u:s3cret@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact("postgresql://h/db?password=s3cret&x=1") == "postgresql://h/db?password=***&x=1"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact("host=h port=5 password=s3cret dbname=d") == "host=h port=5 password=*** dbname=d"
    assert redact("host=h password = 's3 cret' dbname=d") == "host=h password = *** dbname=d"
    assert redact("postgresql://u:s3cret@[::1:1/db") == "postgresql://u:***@[::1:1/db"


@pytest.mark.parametrize(
    ("dsn", "says"),
    [
        ("host=db port=5432 user=u password=s3cret dbname=d", "must be a postgresql:// URL"),
        ("postgresql://u:s3cret@[::1:1/db", "is not a URL: Invalid IPv6 URL"),
    ],
)
def test_a_refused_store_is_named_without_its_password(dsn: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as refused:
        check_store(dsn)
    assert "s3cret" not in str(refused.value) and "***" in str(refused.value)


async def test_store_and_db_together_or_a_bad_url_are_usage_errors(commands: Commands) -> None:
    code, _ = await commands.run(
        "scheduler.bus", "--store", "postgresql://h/db", "--db", "x.db", timeout=20 * unit()
    )
    assert code == 2
    code, _ = await commands.run(
        "scheduler.bus", "--store", "mysql://u:s3cret@h/db", "--port", "0", timeout=20 * unit()
    )
    assert code == 1
    logs = "".join(commands.log_of(proc) for proc in commands.started)
    assert "--store (or SCHEDBUS_STORE) and --db are exclusive" in logs
    assert "store must be a postgresql:// URL" in logs and "mysql://u:***@h/db" in logs
    assert "s3cret" not in logs


async def test_a_database_it_cannot_reach_is_named_without_its_password(
    commands: Commands, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = f"postgresql://schedbus:s3cret@127.0.0.1:{postgres_server.port}/no_such_db"
    monkeypatch.setenv("SCHEDBUS_STORE", dsn)
    code, _ = await commands.run("scheduler.bus", "--port", "0", timeout=20 * unit())
    assert code == 1
    log = commands.log_of(commands.started[-1])
    assert "journal postgresql://schedbus:***@127.0.0.1" in log, log
    assert "no_such_db" in log and "s3cret" not in log


def test_the_migration_is_versioned_and_creates_the_leader_row(postgres_dsn: str) -> None:
    Journal.open_store(postgres_dsn).close()
    Journal.open_store(postgres_dsn, epoch=0).close()
    with psycopg.connect(postgres_dsn) as conn:
        versions = conn.execute("SELECT version FROM schedbus_schema_version").fetchall()
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        leader = conn.execute("SELECT id, epoch, holder FROM schedbus_leader").fetchall()
        assert leader == [(1, 0, "")]


async def test_a_second_bus_on_one_database_is_refused(postgres_dsn: str) -> None:
    with closing(Journal.open_store(postgres_dsn)):
        with pytest.raises(JournalError, match="in use by another bus .'schedbus bus pid"):
            Journal.open_store(postgres_dsn)


async def test_a_submit_is_acknowledged_only_once_committed(
    commands: Commands, postgres_dsn: str
) -> None:
    bus = BusProcess(commands, postgres_dsn)
    await bus.start()
    async with ProducerClient(bus.url, token=bus.token("producer")) as producer:
        job_id = await producer.submit(JobPayload(priority=1, runtime=5, job_id="kept"))
        assert bus.proc is not None
        bus.proc.send_signal(signal.SIGKILL)  # right after `accepted`, before anything else
    await bus.proc.wait()
    with psycopg.connect(postgres_dsn) as conn:
        row = conn.execute("SELECT state FROM schedbus_jobs WHERE id = %s", (job_id,))
        assert row.fetchone() == ("queued",)
    await bus.start()
    proc = bus.proc
    assert f"journal {redact(postgres_dsn)}: 1 jobs to finish (1 queued" in commands.log_of(proc)


@contextmanager
def cut_off(server: PostgresServer, dsn: str) -> Iterator[None]:
    """End every connection to ``dsn``'s database and refuse new ones until the end."""
    name = urlsplit(dsn).path.lstrip("/")
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        try:
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


async def test_a_lost_database_refuses_submits_and_the_bus_keeps_serving(
    postgres_server: PostgresServer, postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with bus_with(store=with_password(postgres_dsn, "s3cret")) as bus:
        health = f"http://127.0.0.1:{bus.port}/healthz"
        async with client(bus) as producer, client(bus) as scheduler:
            await register(producer, "producer")
            await register(scheduler, "scheduler", name="s1", size=1, tasks=["sleep"])
            before = await submit(producer)
            with cut_off(postgres_server, postgres_dsn):
                refused = await request(
                    producer, {"cmd": "job_request", "ref": 1, "payload": {"runtime": 1}}
                )
                assert refused["type"] == "error" and refused["ref"] == 1, refused
                assert refused["message"].startswith("journal failing: "), refused
                assert "cannot connect to PostgreSQL" in refused["message"], refused
                assert refused["message"].endswith("; submit refused"), refused
                assert "s3cret" not in refused["message"]
                reply = await get(health)
                assert reply.status == 503
                assert reply.json()["journal"]["ok"] is False
                # Still serving: reads of what the bus holds are answered.
                job = await get(f"http://127.0.0.1:{bus.port}/api/jobs/{before}")
                assert (job.status, job.json()["id"]) == (200, before)
            # Back: the bus catches up by itself and takes submits again.
            await wait_until(lambda: bus.journal.failure is None, 10 * unit(), "recovered")
            assert (await get(health)).status == 200
            after = await submit(producer)
            assert bus.journal.get(before) is not None and bus.journal.get(after) is not None
        assert "the journal commits again after" in caplog.text


async def test_a_bumped_epoch_fences_every_write(postgres_dsn: str) -> None:
    with closing(Journal.open_store(postgres_dsn, epoch=0)) as journal:
        journal.save([make_job(1)])
        await journal.flush()
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute("UPDATE schedbus_leader SET epoch = 3, holder = 'other' WHERE id = 1")
            journal.save([make_job(2)])
            with pytest.raises(StoreFenced, match="leader epoch 0 but the database is at epoch 3"):
                await journal.flush()
            with pytest.raises(StoreFenced):
                journal.promise_restart(123.0)
            with pytest.raises(StoreFenced):
                journal.vacuum(1e12, {}, 0.0)
            ids = conn.execute("SELECT id FROM schedbus_jobs").fetchall()
            assert ids == [("job-1",)]
            assert journal.restart_promise() is None
            assert isinstance(journal.failure, StoreFenced)
            conn.execute("UPDATE schedbus_leader SET epoch = 0 WHERE id = 1")
            # Not written, kept queued: the journal catches up once the epoch is ours again.
            await journal.flush()
            assert len(conn.execute("SELECT id FROM schedbus_jobs").fetchall()) == 2


async def test_a_schedules_origin_round_trips_through_postgresql(postgres_dsn: str) -> None:
    spec = ScheduleSpec(name="poll", task="noop", every=60.0)
    with closing(Journal.open_store(postgres_dsn)) as journal:
        journal.save_schedules(
            [
                ScheduleState(spec, origin="declared"),
                ScheduleState(msgspec.structs.replace(spec, name="n")),
            ],
            [],
        )
        await journal.flush()
    with closing(Journal.open_store(postgres_dsn)) as journal:
        assert [(s.spec.name, s.origin) for s in journal.schedules()] == [
            ("n", "added"),
            ("poll", "declared"),
        ]


def test_a_closed_store_has_released_the_bus_lock_when_close_returns(postgres_dsn: str) -> None:
    """A bus started again right after a clean stop must not find the lock still held by
    the stopped one's session, whose server process may not have ended yet."""
    with psycopg.connect(postgres_dsn, autocommit=True) as other:
        for _ in range(30):
            Journal.open_store(postgres_dsn).close()
            taken = other.execute("SELECT pg_try_advisory_lock(%s)", (BUS_LOCK,)).fetchone()
            assert taken == (True,), "the closed store's session still held the bus lock"
            other.execute("SELECT pg_advisory_unlock(%s)", (BUS_LOCK,))
