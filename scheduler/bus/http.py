"""Plain HTTP on the bus's own port: the dashboard, ``/healthz``, ``/metrics`` and a JSON API.

websockets calls the server's ``process_request`` for every handshake;
:func:`is_websocket` tells a WebSocket upgrade (served as before) from a plain request,
which :class:`HttpRoutes` answers and closes:

================  =====  ===================================================================
``/``             open   the dashboard page (``scheduler/dashboard/static``)
``/static/NAME``  open   its scripts, styles and the vendored chart library
``/healthz``      open   ``{"ok", "uptime_s", "schedulers", "journal"}``; 503 when not ok
``/metrics``      token  Prometheus text exposition (:mod:`scheduler.bus.metrics`)
``/api/jobs``     token  the ``list_jobs`` answer as JSON; ``state``, ``task``, ``limit``
``/api/jobs/ID``  token  one job's latest event as JSON
================  =====  ===================================================================

"token": on a bus with tokens, ``Authorization: Bearer TOKEN`` with a token whose role
may read (monitor, admin, or a producer, which sees only its own jobs); 401 without one,
403 for a scheduler token. Unknown paths get 404, methods other than GET 405, and a bad
query parameter 400 naming it. The Host/Origin guard has already run.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from typing import Final, get_args
from urllib.parse import parse_qs, urlsplit

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from scheduler.auth import TokenTable
from scheduler.bus.hub import Hub
from scheduler.bus.journal import JournalError
from scheduler.policy.access import Grant, owner_filter
from scheduler.protocol import Error, JobList
from scheduler.protocol_queries import ListJobs
from scheduler.protocol_types import MAX_BULK, MAX_NAME_LEN, JobState

STATIC_PACKAGE: Final = "scheduler.dashboard"
"""The package whose ``static`` directory holds the dashboard's files."""

CONTENT_TYPES: Final[Mapping[str, str]] = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "png": "image/png",
    "svg": "image/svg+xml",
    "json": "application/json",
}
"""Content type by file extension; anything else is served as plain text."""

READ_ROLES: Final = frozenset({"monitor", "admin", "producer"})
"""Token roles that may read ``/metrics`` and ``/api`` (a producer only its own jobs)."""

JOB_STATES: Final = frozenset(get_args(JobState))

PAGE_HEADERS: Final = (
    ("Content-Security-Policy",
     "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)  # fmt: skip
"""Headers of the page and its files: nothing from elsewhere, never inside a frame (its
buttons cancel jobs), and the URL (with its ``#token``) never sent on."""

JobLister = Callable[[ListJobs, Grant], JobList]
"""The bus's ``list_jobs`` path: a request and the reader's grant give the answer."""

Handler = Callable[["Reader", Mapping[str, list[str]], str], Response]


@dataclass(frozen=True, slots=True)
class Reader:
    """Who asks: the grant of the token presented (empty on a bus without tokens)."""

    grant: Grant


class BadQuery(Exception):
    """A query parameter is unknown, repeated or invalid (400, naming it)."""

    def __init__(self, parameter: str, why: str) -> None:
        super().__init__(f"query parameter {parameter!r}: {why}")
        self.parameter = parameter


def is_websocket(request: Request) -> bool:
    """Whether ``request`` asks for a WebSocket upgrade (else it is plain HTTP)."""
    return any("websocket" in value.lower() for value in request.headers.get_all("Upgrade"))


def load_static() -> dict[str, tuple[bytes, str]]:
    """Every file under the dashboard's ``static`` directory, by path relative to it,
    with its content type; read once, so a request never touches the disk."""
    files: dict[str, tuple[bytes, str]] = {}
    root = resources.files(STATIC_PACKAGE) / "static"

    def walk(folder: resources.abc.Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif not entry.name.startswith("."):
                kind = CONTENT_TYPES.get(entry.name.rpartition(".")[2], "text/plain; charset=utf-8")
                files[prefix + entry.name] = (entry.read_bytes(), kind)

    walk(root, "")
    return files


def http_response(
    status: HTTPStatus, body: bytes, content_type: str, extra: tuple[tuple[str, str], ...] = ()
) -> Response:
    """A response that closes the connection, with ``body`` of ``content_type``."""
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("X-Content-Type-Options", "nosniff"),
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def json_response(
    status: HTTPStatus, value: object, extra: tuple[tuple[str, str], ...] = ()
) -> Response:
    """``value`` as JSON, never cached."""
    body = msgspec.json.encode(value)
    return http_response(status, body, "application/json", (("Cache-Control", "no-store"), *extra))


def error(
    status: HTTPStatus, message: str, extra: tuple[tuple[str, str], ...] = (), **fields: str
) -> Response:
    """A JSON error: ``{"error": message, ...fields}``."""
    if status == HTTPStatus.UNAUTHORIZED:
        extra = (("WWW-Authenticate", "Bearer"), *extra)
    return json_response(status, {"error": message, **fields}, extra)


def single(query: Mapping[str, list[str]], name: str) -> str | None:
    """The one value of parameter ``name``, or None if absent; BadQuery if repeated."""
    values = query.get(name)
    if values is None:
        return None
    if len(values) != 1:
        raise BadQuery(name, "give it once")
    return values[0]


def list_request(query: Mapping[str, list[str]]) -> ListJobs:
    """The ``list_jobs`` request ``/api/jobs?state=&task=&limit=&prefix=`` asks for,
    newest first and final jobs included; BadQuery naming the parameter at fault."""
    unknown = set(query) - {"state", "task", "limit", "prefix"}
    if unknown:
        raise BadQuery(sorted(unknown)[0], "unknown; expected state, task, limit or prefix")
    wanted: dict[str, object] = {"final": True, "newest_first": True}
    state = single(query, "state")
    if state is not None:
        if state not in JOB_STATES:
            raise BadQuery("state", f"must be one of {', '.join(sorted(JOB_STATES))}")
        wanted["states"] = [state]
    limit = single(query, "limit")
    if limit is not None:
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_BULK:
            raise BadQuery("limit", f"must be a whole number from 1 to {MAX_BULK}")
        wanted["limit"] = int(limit)
    for name in ("task", "prefix"):
        value = single(query, name)
        if value is not None:
            wanted[name] = name_value(name, value)
    return msgspec.convert(wanted, ListJobs)


def name_value(parameter: str, value: str) -> str:
    """``value`` if it is a valid name or id (1 to :data:`MAX_NAME_LEN` characters), else
    BadQuery naming ``parameter``."""
    if not 1 <= len(value) <= MAX_NAME_LEN:
        raise BadQuery(parameter, f"must be 1 to {MAX_NAME_LEN} characters long")
    return value


class HttpRoutes:
    """Answers the plain HTTP requests the bus's port receives."""

    def __init__(self, hub: Hub, list_jobs: JobLister, tokens: TokenTable | None) -> None:
        """Serve ``hub``'s figures, ``list_jobs`` for ``/api/jobs`` (the bus's own
        ``list_jobs`` path), behind ``tokens`` (None: open)."""
        self._hub = hub
        self._list_jobs = list_jobs
        self._tokens = tokens
        self._static = load_static()
        self._api: dict[str, Handler] = {"/metrics": self._metrics, "/api/jobs": self._jobs}

    def respond(self, request: Request) -> Response:
        """The response to plain HTTP ``request`` (never raises for a bad request)."""
        if request.method != "GET":
            allow = (("Allow", "GET"),)
            return error(HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method}: only GET", allow)
        url = urlsplit(request.path)
        path = url.path
        if path == "/healthz":
            return self._health()
        static = self._static_file(path)
        if static is not None:
            return static
        handler = self._api.get(path)
        job_id = path.removeprefix("/api/jobs/") if path.startswith("/api/jobs/") else None
        if handler is None and job_id is None:
            return error(HTTPStatus.NOT_FOUND, f"no such path: {path}")
        reader = self._reader(request)
        if isinstance(reader, Response):
            return reader
        query = parse_qs(url.query, keep_blank_values=True)
        try:
            if handler is not None:
                return handler(reader, query, path)
            return self._job(reader, query, job_id or "")
        except BadQuery as exc:
            return error(HTTPStatus.BAD_REQUEST, str(exc), parameter=exc.parameter)
        except JournalError as exc:
            return error(HTTPStatus.SERVICE_UNAVAILABLE, f"the journal cannot be read: {exc}")

    def _static_file(self, path: str) -> Response | None:
        """The page or one of its files; None if ``path`` names neither."""
        if path in ("/", "/index.html"):
            name = "index.html"
        elif path.startswith("/static/"):
            name = path.removeprefix("/static/")
        else:
            return None
        found = self._static.get(name)
        if found is None:
            return error(HTTPStatus.NOT_FOUND, f"no such file: {path}")
        body, kind = found
        headers = (("Cache-Control", "no-cache"), *PAGE_HEADERS)
        return http_response(HTTPStatus.OK, body, kind, headers)

    def _reader(self, request: Request) -> Reader | Response:
        """The reader the request's bearer token makes, or the 401/403 refusing it."""
        if self._tokens is None:
            return Reader(Grant())
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        entry = self._tokens.find(token.strip()) if scheme.lower() == "bearer" else None
        if entry is None:
            return error(
                HTTPStatus.UNAUTHORIZED,
                "a token is required: send Authorization: Bearer TOKEN (see tokens.json)",
            )
        if entry.role not in READ_ROLES:
            return error(HTTPStatus.FORBIDDEN, f"a {entry.role} token may not read jobs")
        return Reader(Grant(entry.role, entry.name))

    def _health(self) -> Response:
        hub = self._hub
        failure = hub.journal.failure
        body = {
            "ok": failure is None,
            "uptime_s": round(hub.clock() - hub.started_at, 3),
            "schedulers": hub.live_figures().schedulers,
            "journal": {"ok": failure is None, "error": None if failure is None else str(failure)},
        }
        status = HTTPStatus.OK if failure is None else HTTPStatus.SERVICE_UNAVAILABLE
        return json_response(status, body)

    def _metrics(self, reader: Reader, query: Mapping[str, list[str]], path: str) -> Response:
        return http_response(HTTPStatus.OK, self._hub.metrics.exposition(), CONTENT_TYPE_LATEST)

    def _jobs(self, reader: Reader, query: Mapping[str, list[str]], path: str) -> Response:
        return json_response(HTTPStatus.OK, self._list_jobs(list_request(query), reader.grant))

    def _job(self, reader: Reader, query: Mapping[str, list[str]], job_id: str) -> Response:
        if query:
            raise BadQuery(sorted(query)[0], "unknown; /api/jobs/ID takes none")
        hub = self._hub
        stored = None if hub.core.tracks(job_id) else hub.journal.get(job_id)
        found = hub.core.watch(job_id, hub.wall(), stored=stored, by=owner_filter(reader.grant))
        if found is None:
            return error(HTTPStatus.NOT_FOUND, f"no job {job_id}")
        if isinstance(found, Error):
            return error(HTTPStatus.FORBIDDEN, f"job {job_id} is not yours")
        return json_response(HTTPStatus.OK, found)
