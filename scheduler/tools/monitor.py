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
from scheduler.protocol_types import TRANSIENT_EVENTS

log = logging.getLogger("scheduler.monitor")


def format_event(event: JobEvent) -> str:
    """One human-readable line for an event (a line per line of output for ``output``)."""
    stamp = datetime.datetime.fromtimestamp(event.time).strftime("%H:%M:%S.%f")[:-3]
    if event.event in TRANSIENT_EVENTS:
        return format_transient(stamp, event)
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


def format_transient(stamp: str, event: JobEvent) -> str:
    """``progress 40% message`` for a progress event; each line of an output event's
    text after ``output ID |``."""
    head = f"{stamp} {event.event:<9} {short_id(event.id)}"
    if event.event == "progress":
        percent = round(100 * (event.progress or 0.0))
        return f"{head} {percent:>3}% {shorten(event.message or '')}".rstrip()
    lines = (event.output or "").splitlines() or [""]
    return "\n".join(f"{head} | {shorten(line)}" for line in lines)


def event_json(event: JobEvent) -> str:
    """One JSON object for an event: every field, ``scheduler`` always present."""
    fields = msgspec.structs.asdict(event)
    fields.setdefault("scheduler", None)
    return json.dumps(fields)


async def watch(
    url: str,
    name: str | None,
    token: str | None,
    as_json: bool,
    cafile: str | None = None,
    show_output: bool = False,
) -> None:
    """Print events until cancelled, reconnecting with backoff when the bus is away;
    ``output`` events only if ``show_output``.

    Raises :class:`~scheduler.connect.RegistrationRefused` if the bus refuses this
    monitor (a bad token, say): retrying would be refused again.
    """
    as_text = event_json if as_json else format_event

    def render(event: JobEvent) -> str | None:
        return None if event.event == "output" and not show_output else as_text(event)

    async def serve(registration: Registration) -> None:
        log.info("watching %s", url)
        for message in registration.early:
            _show_message(message, render)
        async for frame in registration.ws:
            _show(frame, render)

    register = Register(type="monitor", protocol=2, name=name, token=token, batch=True)
    await Connector(url, cafile).run(lambda: register, serve)


def _show(frame: str | bytes, render: Callable[[JobEvent], str | None]) -> None:
    for message in codec.decode_bus_frame(frame):
        if isinstance(message, codec.ProtocolError):
            log.warning("ignoring a frame that does not decode: %s", message)
        else:
            _show_message(message, render)


def _show_message(message: BusMessage, render: Callable[[JobEvent], str | None]) -> None:
    if isinstance(message, JobEvent):
        text = render(message)
        if text is None:
            return
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    elif isinstance(message, protocol.Error):
        log.error("the bus refused a frame of this monitor: %s", message.message)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON object.")
@click.option("--name", default=None, help="Name to register under.")
@click.option(
    "--output",
    "show_output",
    is_flag=True,
    help="Also print what running jobs write to stdout and stderr (output events).",
)
@click.option("-d", "--debug", is_flag=True, help="Debug logging.")
def cli(
    url: str,
    token: str | None,
    token_file: Path | None,
    cafile: str | None,
    as_json: bool,
    name: str | None,
    show_output: bool,
    debug: bool,
) -> None:
    """Print every job event on the bus, one line each, until interrupted.

    Progress events read ``progress ID 40% message``; the jobs' output is left out
    unless --output is given.

    A bus that refuses this monitor (a bad token) ends it with exit code 1.
    """
    configure_logging(logging.DEBUG if debug else logging.INFO)
    token = pick_token("monitor", token, token_file)
    try:
        run_until_signalled(watch(url, name, token, as_json, cafile, show_output))
    except RegistrationRefused as exc:
        raise click.ClickException(f"the bus {url} refused this monitor: {exc}") from None
