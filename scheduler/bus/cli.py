"""``python -m scheduler.bus``: run the bus until SIGINT or SIGTERM."""

from __future__ import annotations

import click

from scheduler.bus.server import BusConfig, BusServer
from scheduler.cli_support import LOG_LEVELS, configure_logging, run_until_signalled


async def _serve(config: BusConfig) -> None:
    """Serve until cancelled; leaving the ``async with`` closes every connection."""
    async with BusServer(config) as bus:
        await bus.serve_forever()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but loopback is reachable from other machines "
    "(a WARNING is logged): set a token then.",
)
@click.option(
    "--port",
    default=8101,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port to listen on; 0 picks a free port (the URL is logged).",
)
@click.option(
    "--token",
    envvar="SCHEDBUS_TOKEN",
    default=None,
    help="Shared secret every client must send when it registers [env: SCHEDBUS_TOKEN]. "
    "v1 clients cannot send one, so a token shuts them out.",
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
    "--log-level",
    default="INFO",
    show_default=True,
    type=LOG_LEVELS,
    help="Least severe log messages to show; DEBUG logs every job's lifecycle.",
)
def cli(
    host: str, port: int, token: str | None, allow_origins: tuple[str, ...], log_level: str
) -> None:
    """Run the schedbus bus: producers submit jobs, schedulers run them, monitors watch.

    Listens on ws://HOST:PORT (logged at start) until SIGINT or SIGTERM, then closes
    every connection and exits 0.
    """
    configure_logging(log_level.upper())
    config = BusConfig(host=host, port=port, token=token or None, allow_origins=allow_origins)
    run_until_signalled(_serve(config))
