"""``python -m scheduler.bus``: run the bus until SIGINT or SIGTERM."""

from __future__ import annotations

import dataclasses
import logging
import ssl
from pathlib import Path

import click
from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from scheduler.auth import (
    Token,
    TokenFileError,
    TokenTable,
    default_token_file,
    load_or_create_tokens,
    state_dir,
)
from scheduler.bus.config import (
    DEFAULT_HOST,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_PORT,
    DEFAULT_REGISTER_TIMEOUT_S,
    DEFAULT_RETENTION_S,
    DEFAULT_VACUUM_EVERY_S,
    BusConfig,
)
from scheduler.bus.garbage import collect_less_often
from scheduler.bus.journal import JournalError
from scheduler.bus.outbox import DEFAULT_MAX_BACKLOG_BYTES, DEFAULT_MAX_TOTAL_BACKLOG_BYTES
from scheduler.bus.server import BusServer
from scheduler.cli_support import LOG_LEVELS, configure_logging, run_until_signalled
from scheduler.compiled import core_status
from scheduler.policy.commit_window import DEFAULT_COMMIT_WINDOW_S, MAX_COMMIT_WINDOW_S
from scheduler.policy.dispatch.config import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_MAX_EVICTIONS,
    DEFAULT_RESTART_GRACE_S,
    DEFAULT_START_DEADLINE_S,
    DEFAULT_STEAL,
    DispatchConfig,
)
from scheduler.policy.leadership import DEFAULT_LEADER_LEASE_S
from scheduler.policy.stealing import STEAL_STRATEGIES
from scheduler.protocol_types import FINAL_EVENTS, MAX_DELAY_S, MAX_TIMEOUT_S

log = logging.getLogger(__name__)


def default_db() -> Path:
    """``$XDG_STATE_HOME/schedbus/bus.db``, else ``~/.local/state/schedbus/bus.db``
    (the XDG spec ignores a relative ``XDG_STATE_HOME``)."""
    return state_dir() / "bus.db"


def _tokens(path: Path, extra_admin: str | None) -> tuple[TokenTable, str]:
    """The token table of ``path`` (created on first start), plus ``extra_admin`` as an
    admin token named ``token-option``, and the log line that says where it came from;
    ClickException if the file is unusable."""
    try:
        table, created = load_or_create_tokens(path)
    except TokenFileError as exc:
        raise click.ClickException(str(exc)) from None
    if created:
        roles = ", ".join(entry.role for entry in table.tokens)
        note = f"created token file {path} (mode 0600) with a token per role: {roles}"
        note += "; our commands read it"
    else:
        note = f"{len(table.tokens)} tokens loaded from {path}"
    if extra_admin:
        for entry in table.tokens:
            if entry.token == extra_admin:
                raise click.ClickException(
                    f"--token is the token of entry {entry.name!r} ({entry.role}) in {path};"
                    " give the bus's extra admin token a value of its own"
                )
        table = TokenTable((*table.tokens, Token("token-option", "admin", extra_admin)))
    return table, note


def advertise_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback for ``--advertise``: one ``ws://`` or ``wss://`` URL, else a usage
    error naming the option."""
    if value is None:
        return None
    try:
        parse_uri(value)
    except InvalidURI as exc:
        raise click.BadParameter(f"{value!r} is not a ws:// or wss:// URL ({exc.msg})") from None
    return value.rstrip("/")


async def _serve(config: BusConfig, token_note: str) -> None:
    """Serve until cancelled; leaving the ``async with`` closes every connection. With a
    PostgreSQL store, stand by until this bus leads (:func:`serve_elected`).

    ``token_note`` and which dispatch core runs are logged once the bus listens, so that a
    bus that cannot start says only why."""
    collect_less_often()
    if config.store is not None:
        # Imported here: psycopg is loaded only by a bus that journals in PostgreSQL.
        from scheduler.bus.leadership import serve_elected

        _log_started(token_note)
        await serve_elected(config)
        return
    async with BusServer(config) as bus:
        _log_started(token_note)
        await bus.serve_forever()


def _log_started(token_note: str) -> None:
    """What the bus logs once it listens: where its tokens are, which core it runs."""
    log.info("%s", token_note)
    log.info("dispatch core: %s", core_status())


def _retention(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, float]:
    """Parse repeated ``STATE=SECONDS`` into a mapping, refusing unknown states."""
    retention: dict[str, float] = {}
    for value in values:
        state, sep, seconds = value.partition("=")
        if not sep or state not in FINAL_EVENTS:
            raise click.BadParameter(
                f"{value!r}: expected STATE=SECONDS with STATE one of "
                + ", ".join(sorted(FINAL_EVENTS)),
                ctx,
                param,
            )
        try:
            retention[state] = float(seconds)
        except ValueError:
            raise click.BadParameter(f"{value!r}: SECONDS must be a number", ctx, param) from None
        if not retention[state] >= 0:
            raise click.BadParameter(f"{value!r}: SECONDS must be >= 0", ctx, param)
    return retention


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to listen on. Anything but loopback is reachable from other machines: "
    "the bus then refuses to start without TLS (--certfile) unless --insecure.",
)
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port to listen on; 0 picks a free port (the URL is logged).",
)
@click.option(
    "--token-file",
    envvar="SCHEDBUS_TOKEN_FILE",
    default=None,
    metavar="PATH",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON list of the tokens clients must present, each with a name and a role "
    "(producer, scheduler, monitor, admin) [env: SCHEDBUS_TOKEN_FILE]. Created on first "
    "start (mode 0600) with one token per role; refused if others may read it. Our "
    "client commands read the same file. Default: tokens.json next to the default --db.",
)
@click.option(
    "--token",
    envvar="SCHEDBUS_ADMIN_TOKEN",
    default=None,
    help="One more token, with the admin role, besides those of --token-file "
    "[env: SCHEDBUS_ADMIN_TOKEN; not SCHEDBUS_TOKEN, the token every client command "
    "registers with, so an environment shared with a worker never makes its token "
    "an admin's].",
)
@click.option(
    "--no-v1",
    "no_v1",
    is_flag=True,
    help="Refuse tokenless v1 clients (the original prototype). By default they are "
    "accepted from loopback only, and only without an Origin header.",
)
@click.option(
    "--certfile",
    default=None,
    metavar="PEM",
    type=click.Path(exists=True, dir_okay=False),
    help="Serve TLS (wss://) with this certificate chain; clients verify it (--cafile).",
)
@click.option(
    "--keyfile",
    default=None,
    metavar="PEM",
    type=click.Path(exists=True, dir_okay=False),
    help="Private key of --certfile, if not in that file.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow listening beyond loopback without TLS: tokens and jobs then cross the "
    "network in clear.",
)
@click.option(
    "--allow-origin",
    "allow_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Browser Origin allowed to connect, e.g. http://localhost:3000 (repeatable). "
    "Requests with any other Origin header are refused.",
)
@click.option(
    "--db",
    default=None,
    metavar="PATH",
    help="SQLite journal of every job; on start the bus takes back every job not yet "
    "final. Default: $XDG_STATE_HOME/schedbus/bus.db, else "
    "~/.local/state/schedbus/bus.db. ':memory:' keeps none (a restart loses every job).",
)
@click.option(
    "--store",
    envvar="SCHEDBUS_STORE",
    default=None,
    metavar="URL",
    help="PostgreSQL journal instead of --db: postgresql://USER:PASSWORD@HOST:PORT/DBNAME "
    "[env: SCHEDBUS_STORE]. Same guarantees as SQLite (a submit is acknowledged once "
    "committed); the schema is created or migrated at start. Not with --db.",
)
@click.option(
    "--lease",
    default=DEFAULT_LEASE_S,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a scheduler that fell silent or lost its connection keeps its jobs; "
    "then they are requeued. After a bus restart, schedulers have this long to come back.",
)
@click.option(
    "--max-evictions",
    default=DEFAULT_MAX_EVICTIONS,
    show_default=True,
    type=click.IntRange(min=0),
    help="Evictions after which a job is no longer evictable (no starvation).",
)
@click.option(
    "--max-deliveries",
    default=DEFAULT_MAX_DELIVERIES,
    show_default=True,
    type=click.IntRange(min=1),
    help="Assignments (plus the job's own max_retries) after which a job is dead "
    "instead of assigned again (a job that kills its schedulers).",
)
@click.option(
    "--retention",
    multiple=True,
    metavar="STATE=SECONDS",
    callback=_retention,
    help="How long final jobs in STATE stay in the journal, e.g. failed=2592000 "
    "(repeatable); other states keep --retention-default.",
)
@click.option(
    "--retention-default",
    default=DEFAULT_RETENTION_S,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds a final job stays in the journal (7 days).",
)
@click.option(
    "--vacuum-every",
    default=DEFAULT_VACUUM_EVERY_S,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between deletions of final jobs past their retention.",
)
@click.option(
    "--steal",
    default=DEFAULT_STEAL,
    show_default=True,
    type=click.Choice(STEAL_STRATEGIES),
    help="Work stealing: a scheduler with a free slot and an empty local queue takes a job "
    "waiting in another's queue. 'urgent': the most urgent waiting job anywhere, so a free "
    "slot anywhere runs it; 'tail': the last (least urgent, latest) job of the longest "
    "queue, as classic work-stealing pools do; 'off': never.",
)
@click.option(
    "--age-every",
    default=None,
    metavar="SECONDS",
    type=click.FloatRange(min=0, min_open=True),
    help="Anti-starvation aging: each SECONDS a job waits (since it was submitted or last "
    "requeued) counts as one priority level more urgent, never past 0. Default: off.",
)
@click.option(
    "--restart-grace",
    default=DEFAULT_RESTART_GRACE_S,
    show_default=True,
    type=click.FloatRange(0, MAX_TIMEOUT_S),
    help="On SIGINT/SIGTERM, tell the schedulers to keep running their jobs this many "
    "seconds (not just one lease), and journal the promise: a bus restarted on the same "
    "--db within it leaves running jobs undisturbed. 0: no promise. Needs a journal file.",
)
@click.option(
    "--start-deadline",
    default=DEFAULT_START_DEADLINE_S,
    show_default=True,
    type=click.FloatRange(0, MAX_TIMEOUT_S),
    help="Seconds a scheduler with free slots may hold assigned jobs without starting "
    "any (nor ending one); then they are requeued and it gets no new work until it starts "
    "one or registers again. 0: no deadline.",
)
@click.option(
    "--misfire-grace",
    default=None,
    metavar="SECONDS",
    type=click.FloatRange(0, MAX_DELAY_S),
    help="Seconds past its time a delayed job (run_at/delay) that gives no misfire_grace "
    "of its own may still start; later (the bus was down, or no scheduler served its "
    "task) it ends 'expired' instead. Default: none, it runs however late.",
)
@click.option(
    "--max-backlog-bytes",
    default=DEFAULT_MAX_BACKLOG_BYTES,
    show_default=True,
    type=click.IntRange(min=1),
    help="Bytes of frames a producer or monitor may fall behind (not reading) before it "
    "is disconnected.",
)
@click.option(
    "--max-total-backlog-bytes",
    default=DEFAULT_MAX_TOTAL_BACKLOG_BYTES,
    show_default=True,
    type=click.IntRange(min=1),
    help="Bytes of frames all clients together may fall behind; past it the client with "
    "the largest backlog is disconnected first.",
)
@click.option(
    "--register-timeout",
    default=DEFAULT_REGISTER_TIMEOUT_S,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a new connection has to register before it is closed.",
)
@click.option(
    "--max-connections",
    default=DEFAULT_MAX_CONNECTIONS,
    show_default=True,
    type=click.IntRange(min=1),
    help="Open connections past which new ones are refused (HTTP 503, logged once).",
)
@click.option(
    "--advertise",
    default=None,
    metavar="URL",
    callback=advertise_url,
    help="With --store: the ws:// or wss:// URL clients reach this bus at, which a "
    "standby names to them while this bus leads. Default: the URL it listens on.",
)
@click.option(
    "--leader-lease",
    default=DEFAULT_LEADER_LEASE_S,
    show_default=True,
    type=float,
    metavar="SECONDS",
    help="With --store: a leader that has not renewed its lease (every 0.5 s) for this "
    "long is deposed by a standby, which ends its database sessions and takes the lead "
    "(a frozen leader: SIGSTOP, a paused VM). More than 1.5.",
)
@click.option(
    "--commit-window",
    default=DEFAULT_COMMIT_WINDOW_S,
    show_default=True,
    type=click.FloatRange(0, MAX_COMMIT_WINDOW_S),
    help="Under load (schedulers hold several jobs), a journal commit that only job "
    "events wait for starts no sooner than this many seconds after the previous one, so "
    "the reports that come meanwhile share it: fewer commits and fsyncs, events up to "
    "this much later. Acknowledgments, assignments and stops never wait. 0: no window.",
)
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=LOG_LEVELS,
    help="Least severe log messages to show; DEBUG logs every job's lifecycle.",
)
def cli(
    host: str,
    port: int,
    token_file: Path | None,
    token: str | None,
    no_v1: bool,
    certfile: str | None,
    keyfile: str | None,
    insecure: bool,
    allow_origins: tuple[str, ...],
    db: str | None,
    store: str | None,
    lease: float,
    max_evictions: int,
    max_deliveries: int,
    retention: dict[str, float],
    retention_default: float,
    vacuum_every: float,
    steal: str,
    age_every: float | None,
    restart_grace: float,
    start_deadline: float,
    misfire_grace: float | None,
    max_backlog_bytes: int,
    max_total_backlog_bytes: int,
    register_timeout: float,
    max_connections: int,
    advertise: str | None,
    leader_lease: float,
    commit_window: float,
    log_level: str,
) -> None:
    """Run the schedbus bus: producers submit jobs, schedulers run them, monitors watch.

    Listens on ws://HOST:PORT (logged at start) until SIGINT or SIGTERM, then closes
    every connection and exits 0. Every accepted job is journaled in --db (or PostgreSQL,
    --store) before it is acknowledged, and survives a restart. Every client presents a token of
    --token-file, whose role says what it may do. One bus per journal: a second one on
    the same --db refuses to start, naming the pid that holds it. If the journal cannot
    commit (a full disk), the bus keeps running, refuses submits saying why, and recovers
    by itself.
    """
    configure_logging(log_level.upper())
    if store is not None and db is not None:
        raise click.UsageError("--store (or SCHEDBUS_STORE) and --db are exclusive: give one")
    if advertise is not None and store is None:
        raise click.UsageError("--advertise names a bus of several on one --store: give --store")
    try:
        config = BusConfig(
            host=host,
            port=port,
            v1=not no_v1,
            certfile=certfile,
            keyfile=keyfile,
            insecure=insecure,
            allow_origins=allow_origins,
            db=str(default_db()) if db is None else db,
            store=store,
            advertise=advertise,
            leader_lease=leader_lease,
            rules=DispatchConfig(
                lease,
                max_evictions,
                max_deliveries,
                steal=steal,
                age_every=age_every,
                start_deadline=start_deadline or None,
                misfire_grace=misfire_grace,
            ),
            retention=retention,
            retention_default=retention_default,
            vacuum_every=vacuum_every,
            restart_grace=restart_grace,
            max_backlog_bytes=max_backlog_bytes,
            max_total_backlog_bytes=max_total_backlog_bytes,
            register_timeout=register_timeout,
            max_connections=max_connections,
            commit_window=commit_window,
        )
        config.ssl_context()  # fail now, in one line, rather than once serving starts
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, ssl.SSLError) as exc:
        raise click.ClickException(f"cannot load TLS certificate {certfile}: {exc}") from None
    # Only a configuration that can start creates the token file.
    tokens, token_note = _tokens(token_file or default_token_file(), token)
    config = dataclasses.replace(config, tokens=tokens)
    try:
        run_until_signalled(_serve(config, token_note))
    except JournalError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        # The bus names the address; the errno prefix adds nothing for a reader.
        raise click.ClickException(exc.strerror or str(exc)) from None
