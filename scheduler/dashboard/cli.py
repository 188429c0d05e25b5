"""``python -m scheduler.dashboard``: print (or open) a signed-in link to the bus's dashboard.

The link is the bus's HTTP URL with the token in its fragment, ``http://HOST:PORT/#token=…``:
browsers never send a fragment to the server, and the page moves the token into
``sessionStorage`` and drops it from the address bar.
"""

from __future__ import annotations

import webbrowser
from pathlib import Path
from urllib.parse import quote

import click

from scheduler.cli_support import bus_url, pick_token
from scheduler.connect import DEFAULT_URL, parse_bus_urls


def dashboard_url(url: str, token: str | None) -> str:
    """The dashboard's address on the bus at WebSocket ``url`` (``ws://`` or ``wss://``),
    signed in with ``token`` when there is one. Of a list of buses, the first: a bus
    that stands by redirects its dashboard to the leader's."""
    first = parse_bus_urls(url)[0]
    base = "http" + first.removeprefix("ws").rstrip("/") + "/"
    return base if token is None else f"{base}#token={quote(token, safe='')}"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--bus",
    "url",
    envvar="SCHEDBUS_URL",
    default=DEFAULT_URL,
    show_default=True,
    show_envvar=True,
    metavar="URL",
    callback=bus_url,
    help="URL of the bus, ws:// or wss://, or a comma-separated list of buses sharing "
    "one journal (the link goes to the first, which sends a browser on to the leader); "
    "the dashboard is on the same port.",
)
@click.option(
    "--token-file",
    envvar="SCHEDBUS_TOKEN_FILE",
    default=None,
    metavar="PATH",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Token file the bus created (env SCHEDBUS_TOKEN_FILE). Default: "
    "$XDG_STATE_HOME/schedbus/tokens.json, else ~/.local/state/schedbus/tokens.json.",
)
@click.option(
    "--read-only",
    is_flag=True,
    help="Sign in with the monitor token (sees everything, cancels and retries nothing) "
    "instead of the admin token.",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the link in a browser too.")
def cli(url: str, token_file: Path | None, read_only: bool, open_browser: bool) -> None:
    """Print a link to the bus's dashboard, signed in with a token from the token file.

    Anyone who has the link has the token: share it as you would the token itself.
    """
    token = pick_token("monitor" if read_only else "admin", None, token_file)
    if token is None:
        click.echo("dashboard: no token file; the link signs nobody in", err=True)
    link = dashboard_url(url, token)
    click.echo(link)
    if open_browser:
        webbrowser.open(link)
