"""``python -m scheduler.monitor``: prints every job event on the bus, one line each.

It registers with the v2 ``monitor`` role, which receives every event of every job,
and reconnects with backoff if the bus goes away.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import click
import msgspec
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from scheduler import protocol
from scheduler.auth import tls_options
from scheduler.cli_support import (
    auth_options,
    bus_url,
    configure_logging,
    pick_token,
    run_until_signalled,
    shorten,
)
from scheduler.policy.backoff import Backoff
from scheduler.protocol import JobEvent, Register

log = logging.getLogger("scheduler.monitor")


def format_event(event: JobEvent) -> str:
    """One human-readable line for an event."""
    stamp = datetime.datetime.fromtimestamp(event.time).strftime("%H:%M:%S.%f")[:-3]
    line = (
        f"{stamp} {event.event:<9} {event.id[:8]} p={event.priority:<2} "
        f"state={event.state:<9} on={event.scheduler or '-'} attempt={event.attempt}"
    )
    if event.evictions:
        line += f" evictions={event.evictions}"
    if event.wall_s is not None:
        line += f" wall={event.wall_s:.3f}s"
    if event.error:
        line += f" error={event.error!r}"
    if event.result is not None:
        line += f" result={shorten(json.dumps(event.result))}"
    return line


def event_json(event: JobEvent) -> str:
    """One JSON object for an event: every field, ``scheduler`` always present."""
    fields = msgspec.structs.asdict(event)
    fields.setdefault("scheduler", None)
    return json.dumps(fields)


async def watch(
    url: str, name: str | None, token: str | None, as_json: bool, cafile: str | None = None
) -> None:
    """Print events until cancelled, reconnecting with backoff when the bus is away."""
    backoff = Backoff()
    render = event_json if as_json else format_event
    tls = tls_options(url, cafile)
    while True:
        try:
            async with connect(
                url, compression=None, max_size=protocol.MAX_FRAME_BYTES, **tls
            ) as ws:
                await ws.send(
                    protocol.encode(Register(type="monitor", protocol=2, name=name, token=token))
                )
                backoff.reset()
                log.info("watching %s", url)
                try:
                    async for frame in ws:
                        _show(frame, render)
                except asyncio.CancelledError:
                    # Close with 1000: leaving `async with connect()` on an exception
                    # would close with 1011, which the bus logs as an internal error.
                    await ws.close()
                    raise
        except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
            delay = backoff.next_delay()
            log.warning("bus %s unavailable (%s); retrying in %.1fs", url, exc, delay)
            await asyncio.sleep(delay)


def _show(frame: str | bytes, render: Callable[[JobEvent], str]) -> None:
    try:
        message = protocol.decode_bus(frame)
    except protocol.ProtocolError as exc:
        log.warning("ignoring a frame that does not decode: %s", exc)
        return
    if isinstance(message, JobEvent):
        sys.stdout.write(render(message) + "\n")
        sys.stdout.flush()
    elif isinstance(message, protocol.Error):
        log.error("the bus refused this monitor: %s", message.message)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--bus",
    "url",
    envvar="SCHEDBUS_URL",
    default="ws://localhost:8101",
    show_default=True,
    callback=bus_url,
    help="Bus URL (env SCHEDBUS_URL).",
)
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON object.")
@click.option("--name", default=None, help="Name to register under.")
@click.option(
    "--token", envvar="SCHEDBUS_TOKEN", default=None, help="Bus token (env SCHEDBUS_TOKEN)."
)
@click.option("-d", "--debug", is_flag=True, help="Debug logging.")
@auth_options
def cli(
    url: str,
    as_json: bool,
    name: str | None,
    token: str | None,
    debug: bool,
    token_file: Path | None,
    cafile: str | None,
) -> None:
    """Print every job event on the bus, one line each, until interrupted."""
    configure_logging(logging.DEBUG if debug else logging.INFO)
    token = pick_token("monitor", token, token_file)
    run_until_signalled(watch(url, name, token, as_json, cafile))
