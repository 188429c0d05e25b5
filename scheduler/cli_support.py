"""What every command shares: logging set-up and running a coroutine until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from websockets.exceptions import InvalidURI

from scheduler.auth import TokenFileError, TokenRole, default_token_file, token_for
from scheduler.connect import DEFAULT_URL, parse_bus_urls
from scheduler.protocol_types import MAX_NAME_LEN

T = TypeVar("T")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOG_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)


F = TypeVar("F", bound=Callable[..., Any])


def auth_options(command: F) -> F:
    """Add ``--token-file`` and ``--cafile`` (parameters ``token_file``, ``cafile``) to a
    command that talks to the bus; resolve its token with :func:`pick_token`."""
    options = (
        click.option(
            "--token-file",
            envvar="SCHEDBUS_TOKEN_FILE",
            default=None,
            metavar="PATH",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Token file the bus created, from which this command takes the token of "
            "its role unless --token is given (env SCHEDBUS_TOKEN_FILE). Default: "
            "$XDG_STATE_HOME/schedbus/tokens.json, else ~/.local/state/schedbus/tokens.json.",
        ),
        click.option(
            "--cafile",
            envvar="SCHEDBUS_CAFILE",
            default=None,
            metavar="PEM",
            type=click.Path(exists=True, dir_okay=False),
            help="CA certificates to verify a wss:// bus with (env SCHEDBUS_CAFILE). "
            "Default: the system's.",
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


def pick_token(role: TokenRole, token: str | None, token_file: Path | None) -> str | None:
    """``token`` if given, else the token for ``role`` in ``token_file`` (default: the
    bus's default token file); None if there is no such file. ClickException if the file
    is not private or not valid."""
    if token:
        return token
    try:
        return token_for(role, token_file or default_token_file())
    except TokenFileError as exc:
        raise click.ClickException(str(exc)) from None


def bus_url(ctx: click.Context | None, param: click.Parameter | None, value: str) -> str:
    """Click callback for ``--bus``: refuse anything but a ``ws://`` or ``wss://`` URL, or
    a comma-separated list of them (:func:`~scheduler.connect.parse_bus_urls`), with a
    one-line usage error naming the option and the bad entry (exit 2), never a traceback
    later."""
    try:
        parse_bus_urls(value)
    except InvalidURI as exc:
        raise click.BadParameter(f"{exc.uri!r} is not a ws:// or wss:// URL ({exc.msg})") from None
    return value


def _token(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback for ``--token``: at most what a ``register`` carries; empty is none."""
    if value is not None and len(value) > MAX_NAME_LEN:
        raise click.BadParameter(f"must be at most {MAX_NAME_LEN} characters long")
    return value or None


def connection_options(command: F) -> F:
    """Add ``--bus``, ``--token``, ``--token-file`` and ``--cafile`` (parameters ``url``,
    ``token``, ``token_file``, ``cafile``) to a command that talks to the bus: the one
    definition every command shares."""
    command = auth_options(command)
    options = (
        click.option(
            "--bus",
            "url",
            envvar="SCHEDBUS_URL",
            default=DEFAULT_URL,
            show_default=True,
            show_envvar=True,
            metavar="URL",
            callback=bus_url,
            help="URL of the bus, ws:// or wss://, or several buses sharing one journal "
            "separated by commas (the command finds the one that leads). While none is "
            "reachable, the command retries with backoff (commands with --connect-timeout "
            "give up after it).",
        ),
        click.option(
            "--token",
            envvar="SCHEDBUS_TOKEN",
            default=None,
            show_envvar=True,
            metavar="TOKEN",
            callback=_token,
            help="Token to register with. Default: the token of this command's role in "
            "--token-file.",
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


def client_options(command: F) -> F:
    """:func:`connection_options` plus ``--connect-timeout`` (parameter
    ``connect_timeout``), for a command that gives up if the bus cannot be reached."""
    command = connection_options(command)
    return click.option(
        "--connect-timeout",
        type=click.FloatRange(min=0),
        default=10.0,
        show_default=True,
        help="How long to keep trying to reach the bus.",
    )(command)


def configure_logging(level: str | int) -> None:
    """Log to stderr with timestamps at ``level``."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)


def run_until_signalled(main: Coroutine[Any, Any, T]) -> T | None:
    """Run ``main`` on a new event loop; SIGINT or SIGTERM cancels it cleanly.

    Returns what ``main`` returned, or None when a signal stopped it. ``main`` sees
    :class:`asyncio.CancelledError` and runs its ``finally`` blocks (stopping child
    processes, closing sockets) before this returns.
    """
    return run_until_signalled_by(main)[0]


def run_until_signalled_by(main: Coroutine[Any, Any, T]) -> tuple[T | None, int | None]:
    """:func:`run_until_signalled`, and the number of the signal that stopped ``main``
    (None if it ended by itself)."""
    stopped_by: int | None = None

    async def guarded() -> T | None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def stop(signum: int) -> None:
            nonlocal stopped_by
            logging.getLogger(__name__).info("%s received: stopping", signal.Signals(signum).name)
            stopped_by = signum
            task.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop, signum)
        try:
            return await main
        except asyncio.CancelledError:
            if stopped_by is None:
                raise
            return None
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    result = asyncio.run(guarded())
    return result, stopped_by


def shorten(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, marked with ``...`` if it was longer: for
    results and errors in human-readable lines (the ``--json`` output keeps them whole)."""
    return text if len(text) <= limit else text[:limit] + "..."
