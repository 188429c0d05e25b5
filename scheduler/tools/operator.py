"""What the operator's group commands (``jobs``, ``schedules``) share: the group with its
connection options, and one request against the bus with them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click

from scheduler.cli_support import (
    client_options,
    configure_logging,
    pick_token,
    run_until_signalled,
)
from scheduler.connect import RegistrationRefused
from scheduler.producer.client import BusConnectionLost, ProducerClient, SubmitError

T = TypeVar("T")


def operator_group(describe: Callable[[], None]) -> click.Group:
    """The click group of an operator's command, with the shared connection options and
    ``-d``; its help is ``describe``'s docstring. The group keeps the options on the
    context (with the admin token of ``--token-file`` unless ``--token`` is given) for
    its subcommands, which reach the bus with :func:`call_bus`."""

    @click.group(
        name=describe.__name__,
        help=describe.__doc__,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    @client_options
    @click.option("-d", "--debug", is_flag=True, help="Debug logging.")
    @click.pass_context
    def group(
        ctx: click.Context,
        url: str,
        token: str | None,
        token_file: Path | None,
        cafile: str | None,
        connect_timeout: float,
        debug: bool,
    ) -> None:
        configure_logging(logging.DEBUG if debug else logging.WARNING)
        ctx.obj = {
            "url": url,
            "token": pick_token("admin", token, token_file),
            "cafile": cafile,
            "connect_timeout": connect_timeout,
        }

    return group


def call_bus(ctx: click.Context, action: Callable[[ProducerClient], Awaitable[T]]) -> T:
    """Connect with the options :func:`operator_group` kept, run ``action`` and return
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
