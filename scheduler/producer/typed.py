"""Submitting a job from its ``@task`` function: ``add.submit(2, 3, priority=1)`` and
``await add.submit_async(2, 3)`` (what :func:`scheduler.tasks.task` attaches, importing
this module only when called).

The arguments are bound against the function's signature first
(:meth:`inspect.Signature.bind`): a missing, unexpected or surplus argument, or one that
does not encode as JSON, raises ``TypeError`` naming it before anything is sent. The
keywords in :data:`JOB_OPTIONS` are the job's, not the task's: ``priority``, ``timeout``,
``delay``, ``run_at`` (epoch seconds or a datetime with a zone), ``job_id``,
``on_conflict``, ``max_retries``, ``retry_backoff``, ``misfire_grace``, ``depends_on``,
``on_dependency_failure``, ``pass_results``, ``broadcast`` (as in
:class:`~scheduler.protocol.JobPayload`), and ``client``. A task parameter named as one of
them is passed positionally. A bad option value raises ``ValueError`` naming it.

Without ``client=``, :func:`submit` uses :func:`scheduler.producer.sync.default_client`
and :func:`submit_async` one :class:`~scheduler.producer.client.ProducerClient` per event
loop, made from the environment (:func:`scheduler.producer.settings.client_settings`) and
closed by :func:`close_default_client`.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import msgspec

from scheduler.codec import plain_str
from scheduler.producer.client import ProducerClient
from scheduler.producer.handle import Job
from scheduler.producer.settings import client_settings
from scheduler.producer.sync import SyncClient, SyncJob, default_client
from scheduler.protocol import JobPayload
from scheduler.protocol_types import Args

_json = msgspec.json.Encoder(enc_hook=plain_str)
JOB_OPTIONS: Final = frozenset(
    {
        "priority",
        "timeout",
        "delay",
        "run_at",
        "job_id",
        "on_conflict",
        "max_retries",
        "retry_backoff",
        "misfire_grace",
        "depends_on",
        "on_dependency_failure",
        "pass_results",
        "broadcast",
        "client",
    }
)
"""The keywords of ``submit``/``submit_async`` that configure the job, not the task."""


@dataclass(frozen=True, slots=True)
class PreparedSubmit:
    """A checked job of a task, ready to send: the payload, the time options the client
    takes apart, and the client asked for (None: the default)."""

    payload: JobPayload
    delay: float | None
    run_at: float | datetime | None
    client: object


def prepare(
    name: str, function: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, Any]
) -> PreparedSubmit:
    """Split ``kwargs`` into job options and task arguments, bind the arguments against
    ``function``'s signature and build the job of task ``name``. Raises ``TypeError`` for
    arguments the function does not take or JSON cannot carry, ``ValueError`` for a bad
    option; nothing is sent."""
    options = {key: kwargs.pop(key) for key in list(kwargs) if key in JOB_OPTIONS}
    task_args = bind_arguments(name, function, args, kwargs)
    client = options.pop("client", None)
    delay, run_at = options.pop("delay", None), options.pop("run_at", None)
    if options.get("depends_on") is not None:
        options["depends_on"] = [str(job_id) for job_id in options["depends_on"]]
    try:
        payload = msgspec.convert({**options, "task": name, "args": task_args}, JobPayload)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{name}.submit(): {exc}") from None
    return PreparedSubmit(payload, delay, run_at, client)


def bind_arguments(
    name: str, function: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, Any]
) -> Args:
    """The job's ``args`` for calling ``function(*args, **kwargs)``: a JSON array when
    every argument can go by position, else a JSON object. Raises ``TypeError`` naming
    what does not bind or encode."""
    signature = inspect.signature(function)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{name}.submit(): {exc} (it takes {name}{_shown(signature)})") from None
    for key, value in bound.arguments.items():
        try:
            _json.encode(value)
        except TypeError as exc:
            raise TypeError(f"{name}.submit(): argument {key!r}: {exc}") from None
    if not bound.kwargs:
        return list(bound.args)
    return _as_keywords(name, signature, bound.arguments)


def _shown(signature: inspect.Signature) -> inspect.Signature:
    """``signature`` without its annotations: the parameters as an error message shows them."""
    empty = inspect.Parameter.empty
    return signature.replace(
        parameters=[p.replace(annotation=empty) for p in signature.parameters.values()],
        return_annotation=empty,
    )


def _as_keywords(
    name: str, signature: inspect.Signature, arguments: Mapping[str, object]
) -> dict[str, object]:
    """Every bound argument as a keyword (a job's args are positions or keywords, not
    both); TypeError if one can only go by position."""
    keywords: dict[str, object] = {}
    for key, value in arguments.items():
        kind = signature.parameters[key].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            assert isinstance(value, dict)
            keywords.update(value)
        elif kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL):
            raise TypeError(
                f"{name}.submit(): argument {key!r} can only go by position, and a job's "
                "arguments are all positional or all keywords"
            )
        else:
            keywords[key] = value
    return keywords


def submit(
    name: str, function: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, Any]
) -> SyncJob:
    """Submit a job of task ``name`` through a :class:`SyncClient` (``client=``, else the
    default one); return its handle once the bus has journaled it."""
    prepared = prepare(name, function, args, kwargs)
    client = prepared.client or default_client()
    if not isinstance(client, SyncClient):
        raise TypeError(
            f"{name}.submit(): client must be a SyncClient (use submit_async with a "
            f"ProducerClient), not {type(client).__name__}"
        )
    return client.submit(prepared.payload, delay=prepared.delay, run_at=prepared.run_at)


async def submit_async(
    name: str, function: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, Any]
) -> Job:
    """Submit a job of task ``name`` through a :class:`ProducerClient` (``client=``, else
    this event loop's default one); return its handle once the bus has journaled it."""
    prepared = prepare(name, function, args, kwargs)
    client = prepared.client or await default_async_client()
    if not isinstance(client, ProducerClient):
        raise TypeError(
            f"{name}.submit_async(): client must be a ProducerClient (use submit with a "
            f"SyncClient), not {type(client).__name__}"
        )
    return await client.submit(prepared.payload, delay=prepared.delay, run_at=prepared.run_at)


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[ProducerClient]] = (
    weakref.WeakKeyDictionary()
)


async def default_async_client() -> ProducerClient:
    """This event loop's default client, connected on first use from the environment.
    Raises what :meth:`ProducerClient.connect` raises (and tries again on the next call)."""
    loop = asyncio.get_running_loop()
    connecting = _per_loop.get(loop)
    if connecting is None or connecting.done() and not _connected(connecting):
        connecting = _per_loop[loop] = loop.create_task(_connect_default())
    return await asyncio.shield(connecting)


async def close_default_client() -> None:
    """Close this event loop's default client, if it has one."""
    connecting = _per_loop.pop(asyncio.get_running_loop(), None)
    if connecting is not None and connecting.done() and _connected(connecting):
        await connecting.result().close()


def _connected(connecting: asyncio.Task[ProducerClient]) -> bool:
    """Whether a finished connect gave a client (it was not cancelled and did not fail)."""
    return not connecting.cancelled() and connecting.exception() is None


async def _connect_default() -> ProducerClient:
    settings = client_settings()
    client = ProducerClient(settings.url, token=settings.token, cafile=settings.cafile)
    await client.connect()
    return client
