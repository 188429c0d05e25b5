"""Where a library client finds its bus and token when not told: the environment and
the bus's token file, as the commands find theirs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from scheduler.auth import token_for
from scheduler.connect import DEFAULT_URL


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """The bus's URL, the token to register with (None: none) and the CA file."""

    url: str
    token: str | None
    cafile: str | None


def client_settings(
    url: str | None = None,
    token: str | None = None,
    token_file: Path | None = None,
    cafile: str | None = None,
) -> ClientSettings:
    """Each setting given, else from the environment: ``SCHEDBUS_URL`` (default
    ``ws://localhost:8101``), ``SCHEDBUS_TOKEN``, else the producer's token in
    ``token_file``, ``SCHEDBUS_TOKEN_FILE`` or the bus's default token file (None if
    there is no such file), and ``SCHEDBUS_CAFILE``. Raises
    :class:`~scheduler.auth.TokenFileError` for a token file that is not private or valid.
    """
    env = os.environ
    if not token and not env.get("SCHEDBUS_TOKEN"):
        path = token_file or env.get("SCHEDBUS_TOKEN_FILE")
        token = token_for("producer", None if path is None else Path(path))
    return ClientSettings(
        url=url or env.get("SCHEDBUS_URL") or DEFAULT_URL,
        token=token or env.get("SCHEDBUS_TOKEN"),
        cafile=cafile or env.get("SCHEDBUS_CAFILE"),
    )
