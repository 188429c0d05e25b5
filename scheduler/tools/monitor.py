"""``python -m scheduler.monitor``: prints every job event on the bus, one line each.

It registers with the v2 ``monitor`` role, which receives every event of every job,
and reconnects with backoff if the bus goes away (:class:`scheduler.connect.Connector`).
A bus that refuses the registration (a bad token) ends it with exit code 1.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import click
import msgspec

from scheduler import codec, protocol
from scheduler.cli_support import (
    configure_logging,
    connection_options,
    pick_token,
    run_until_signalled,
    shorten,
)
from scheduler.connect import Connector, Registration, RegistrationRefused
from scheduler.ids import short_id
from scheduler.protocol import BusMessage, JobEvent, Register

log = logging.getLogger("scheduler.monitor")


def format_event(event: JobEvent) -> str:
    """One human-readable line for an event."""
    stamp = datetime.datetime.fromtimestamp(event.time).strftime("%H:%M:%S.%f")[:-3]
    line = (
        f"{stamp} {event.event:<9} {short_id(event.id)} p={event.priority:<2} "
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
    """Print events until cancelled, reconnecting with backoff when the bus is away.

    Raises :class:`~scheduler.connect.RegistrationRefused` if the bus refuses this
    monitor (a bad token, say): retrying would be refused again.
    """
    render = event_json if as_json else format_event

    async def serve(registration: Registration) -> None:
        log.info("watching %s", url)
        for message in registration.early:
            _show_message(message, render)
        async for frame in registration.ws:
            _show(frame, render)

    register = Register(type="monitor", protocol=2, name=name, token=token)
    await Connector(url, cafile).run(lambda: register, serve)


def _show(frame: str | bytes, render: Callable[[JobEvent], str]) -> None:
    try:
        message = codec.decode_bus(frame)
    except codec.ProtocolError as exc:
        log.warning("ignoring a frame that does not decode: %s", exc)
        return
    _show_message(message, render)


def _show_message(message: BusMessage, render: Callable[[JobEvent], str]) -> None:
    if isinstance(message, JobEvent):
        sys.stdout.write(render(message) + "\n")
        sys.stdout.flush()
    elif isinstance(message, protocol.Error):
        log.error("the bus refused a frame of this monitor: %s", message.message)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON object.")
@click.option("--name", default=None, help="Name to register under.")
@click.option("-d", "--debug", is_flag=True, help="Debug logging.")
def cli(
    url: str,
    token: str | None,
    token_file: Path | None,
    cafile: str | None,
    as_json: bool,
    name: str | None,
    debug: bool,
) -> None:
    """Print every job event on the bus, one line each, until interrupted.

    A bus that refuses this monitor (a bad token) ends it with exit code 1.
    """
    configure_logging(logging.DEBUG if debug else logging.INFO)
    token = pick_token("monitor", token, token_file)
    try:
        run_until_signalled(watch(url, name, token, as_json, cafile))
    except RegistrationRefused as exc:
        raise click.ClickException(f"the bus {url} refused this monitor: {exc}") from None
