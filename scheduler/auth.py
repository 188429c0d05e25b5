"""Bus tokens: who may connect and with which role; the TLS settings of clients. No
network code; the bus and every client command share it.

The token file is JSON, ``<state dir>/tokens.json`` by default (the state dir is
``$XDG_STATE_HOME/schedbus``, else ``~/.local/state/schedbus``, where the journal lives):
a list of ``{"name", "role", "token"}``. The bus command creates it on its first start
(mode 0600 in a 0700 directory) with one token per role, named after the role; every
later start and every client command reads it. A file that group or others may read is
refused, as ssh refuses such a private key.

A token's ``role`` decides what its holder may do (:data:`TokenRole`); its ``name`` is
the owner recorded on the jobs it submits.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import ssl
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

import msgspec

TokenRole = Literal["producer", "scheduler", "monitor", "admin"]
"""What a token lets its holder do. ``producer``: submit, and cancel or watch its own
jobs. ``scheduler``: run jobs (register as a scheduler, report, heartbeat). ``monitor``:
read (watch any job, stats). ``admin``: anything, including vacuum and cancelling any job,
registering as any client type."""

TOKEN_ROLES: Final[tuple[TokenRole, ...]] = get_args(TokenRole)
TOKEN_FILE_NAME: Final = "tokens.json"
SECRET_BYTES: Final = 32
"""Random bytes in a token and in a scheduler's name secret (hex: twice as many chars)."""


class TokenFileError(Exception):
    """The token file cannot be read, is not private, or is malformed; names the file."""


class Token(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One entry of the token file."""

    name: str
    role: TokenRole
    token: str


@dataclass(frozen=True)
class TokenTable:
    """Every token the bus accepts. :meth:`find` compares in constant time."""

    tokens: tuple[Token, ...]

    def __post_init__(self) -> None:
        """Refuse empty tokens or names, and two entries with the same token."""
        for entry in self.tokens:
            if not entry.token or not entry.name:
                raise ValueError("every token needs a non-empty name and token")
        if len({entry.token for entry in self.tokens}) != len(self.tokens):
            raise ValueError("two entries have the same token")

    @classmethod
    def generate(cls) -> TokenTable:
        """A new table: one random token per role, named after the role."""
        return cls(tuple(Token(role, role, new_secret()) for role in TOKEN_ROLES))

    def find(self, given: str) -> Token | None:
        """The entry whose token is ``given``, or None.

        Every entry is compared, with :func:`hmac.compare_digest`, whether or not an
        earlier one matched: the time taken tells nothing about the tokens.
        """
        found: Token | None = None
        given_bytes = given.encode()
        for entry in self.tokens:
            if hmac.compare_digest(entry.token.encode(), given_bytes):
                found = entry
        return found

    def for_role(self, role: TokenRole) -> Token | None:
        """The first entry with ``role``, or None."""
        return next((entry for entry in self.tokens if entry.role == role), None)


def new_secret() -> str:
    """:data:`SECRET_BYTES` bytes from the OS's generator, as hex."""
    return secrets.token_hex(SECRET_BYTES)


def secret_hash(secret: str) -> str:
    """The SHA-256 of ``secret`` as hex: what the bus keeps of a scheduler's secret.

    A plain hash suffices: the secret is 256 random bits, not a password to brute-force.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str | None, known_hash: str) -> bool:
    """Whether ``secret`` hashes to ``known_hash``, compared in constant time."""
    if secret is None:
        return False
    return hmac.compare_digest(secret_hash(secret).encode(), known_hash.encode())


def state_dir() -> Path:
    """``$XDG_STATE_HOME/schedbus``, else ``~/.local/state/schedbus`` (the XDG spec
    ignores a relative ``XDG_STATE_HOME``)."""
    state = Path(os.environ.get("XDG_STATE_HOME", ""))
    if not state.is_absolute():
        state = Path.home() / ".local" / "state"
    return state / "schedbus"


def default_token_file() -> Path:
    """``tokens.json`` in :func:`state_dir`."""
    return state_dir() / TOKEN_FILE_NAME


_decoder = msgspec.json.Decoder(list[Token])


def load_tokens(path: Path) -> TokenTable:
    """Read the token file at ``path``.

    Raise :class:`FileNotFoundError` if it does not exist, :class:`TokenFileError` if
    group or others may read or write it, or it does not hold a valid token list.
    """
    try:
        file = path.open("rb")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc}") from None
    with file:
        mode = os.fstat(file.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TokenFileError(
                f"token file {path} is accessible by others (mode {stat.S_IMODE(mode):04o});"
                f" it must be private: chmod 600 {path}"
            )
        data = file.read()
    try:
        return TokenTable(tuple(_decoder.decode(data)))
    except (msgspec.DecodeError, ValueError) as exc:
        raise TokenFileError(f"token file {path}: {exc}") from None


def create_tokens(path: Path) -> TokenTable:
    """Write a new :meth:`TokenTable.generate` table to ``path`` and return it.

    The directory is created with mode 0700 if missing; the file is written to a private
    temporary file and renamed into place, so nobody ever sees a partial or readable
    file. Raise :class:`FileExistsError` if ``path`` exists by then (another process
    won the race: read its file instead).
    """
    table = TokenTable.generate()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tokens-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(msgspec.json.format(msgspec.json.encode(list(table.tokens))) + b"\n")
            file.flush()
            os.fsync(file.fileno())
        os.link(tmp, path)  # unlike rename, never replaces a file that appeared meanwhile
    finally:
        os.unlink(tmp)
    return table


def check_private_dir(directory: Path) -> None:
    """Raise :class:`TokenFileError` if ``directory`` exists and another user may write
    in it (group or others have write permission, or it is not ours): whoever can
    write there can replace the token file, or a journal beside it. Nothing if it does
    not exist yet (it is then created 0700)."""
    try:
        status = directory.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TokenFileError(f"cannot check directory {directory}: {exc}") from None
    if status.st_uid != os.getuid():
        raise TokenFileError(
            f"directory {directory} of the token file belongs to uid {status.st_uid}, not"
            f" to this user ({os.getuid()}); it must be ours and private"
        )
    if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise TokenFileError(
            f"directory {directory} of the token file is writable by others (mode"
            f" {stat.S_IMODE(status.st_mode):04o}); it must be private: chmod 700 {directory}"
        )


def load_or_create_tokens(path: Path) -> tuple[TokenTable, bool]:
    """The token table at ``path``, created first if missing; and whether it was created.

    Raise :class:`TokenFileError` as :func:`load_tokens` does, if the directory it is in
    may be written by another user (:func:`check_private_dir`), or naming the path if it
    cannot be created.
    """
    check_private_dir(path.parent)
    try:
        return load_tokens(path), False
    except FileNotFoundError:
        pass
    try:
        return create_tokens(path), True
    except FileExistsError:
        return load_tokens(path), False
    except OSError as exc:
        raise TokenFileError(f"cannot create token file {path}: {exc}") from None


def token_for(role: TokenRole, path: Path | None = None) -> str | None:
    """The token a client command with ``role`` sends: that role's token in the token
    file (default :func:`default_token_file`), else the admin token, else None when there
    is no file. Raise :class:`TokenFileError` for a file that is not private or valid."""
    try:
        table = load_tokens(path or default_token_file())
    except FileNotFoundError:
        return None
    entry = table.for_role(role) or table.for_role("admin")
    return None if entry is None else entry.token


def tls_options(url: str, cafile: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``websockets`` ``connect`` to ``url``: for ``wss://``, a TLS
    context that verifies the bus against ``cafile`` (a PEM bundle; None: the system's
    CAs); for ``ws://``, none. Raise OSError or ssl.SSLError if ``cafile`` cannot be read."""
    if not url.lower().startswith("wss://"):
        return {}
    return {"ssl": ssl.create_default_context(cafile=cafile)}
