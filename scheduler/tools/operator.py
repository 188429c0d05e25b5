"""What the operator's group commands (``jobs``, ``schedules``) share: the connection
options kept on the click context, and one request against the bus with them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click

from scheduler.cli_support import pick_token, run_until_signalled
from scheduler.connect import RegistrationRefused
from scheduler.producer.client import BusConnectionLost, ProducerClient, SubmitError

T = TypeVar("T")


def keep_connection(
    ctx: click.Context,
    url: str,
    token: str | None,
    token_file: Path | None,
    cafile: str | None,
    connect_timeout: float,
) -> None:
    """Keep the group's connection options on ``ctx`` for its subcommands, with the
    admin token of ``token_file`` unless ``token`` is given."""
    ctx.obj = {
        "url": url,
        "token": pick_token("admin", token, token_file),
        "cafile": cafile,
        "connect_timeout": connect_timeout,
    }


def call_bus(ctx: click.Context, action: Callable[[ProducerClient], Awaitable[T]]) -> T:
    """Connect with the options :func:`keep_connection` kept, run ``action`` and return
    what it returned; a failure to reach the bus or a refusal is a one-line click error,
    and Ctrl-C exits 130."""

    async def main() -> T:
        async with ProducerClient(
            ctx.obj["url"],
            token=ctx.obj["token"],
            connect_timeout=ctx.obj["connect_timeout"],
            cafile=ctx.obj["cafile"],
        ) as client:
            return await action(client)

    try:
        result = run_until_signalled(main())
    except (OSError, BusConnectionLost, SubmitError, RegistrationRefused) as exc:
        raise click.ClickException(f"{ctx.obj['url']}: {exc}") from None
    if result is None:
        raise click.exceptions.Exit(130)
    return result
