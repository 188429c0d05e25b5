"""What the bus does with each request of a registered client.

Each handler decodes what the core needs (the journal's record of a job the core no
longer tracks, the client's owner), feeds the core and hands its decisions to
:meth:`Hub.apply <scheduler.bus.hub.Hub.apply>`. Who may send what was checked before
(:func:`scheduler.policy.access.send_refusal`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import msgspec

from scheduler.bus.connection import Connection
from scheduler.bus.gate import journal_problem
from scheduler.bus.hub import Hub
from scheduler.bus.journal import JournalError
from scheduler.codec import ProtocolError, decode_payload
from scheduler.policy.access import Grant, owner_filter
from scheduler.policy.dispatch.decisions import SendReply
from scheduler.policy.job import Job
from scheduler.policy.listing import JobQuery
from scheduler.protocol import (
    Accepted,
    Cancel,
    Error,
    Heartbeat,
    JobEvent,
    JobList,
    JobPayload,
    JobRequest,
    Report,
    Retried,
    SubmitMany,
    SubmittedMany,
    Watch,
    Watching,
)
from scheduler.protocol_queries import GetStats, ListJobs, Retry, Vacuum, Vacuumed
from scheduler.protocol_types import FINAL_EVENTS

# The bus's log lines keep the one logger name its users and tests filter on.
logger = logging.getLogger("scheduler.bus.server")


class Requests:
    """The handlers of every command but ``register``, by message type."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._core = hub.core
        self.handlers: dict[type, Callable[[Connection, Any], None]] = {
            JobRequest: self._submit,
            SubmitMany: self._submit_many,
            Cancel: self._cancel,
            Watch: self._watch,
            Vacuum: self._vacuum,
            GetStats: self._stats,
            ListJobs: self._list_jobs,
            Retry: self._retry,
            Report: self._report,
            Heartbeat: self._heartbeat,
        }
        """The handler of each client message type but :class:`Register`."""

    def handle(self, client: Connection, message: object) -> None:
        """Act on ``message`` from ``client``, which may send it."""
        self.handlers[type(message)](client, message)

    async def vacuum_periodically(self) -> None:
        """Delete the final jobs past their retention every ``vacuum_every`` seconds."""
        while True:
            await asyncio.sleep(self._hub.config.vacuum_every)
            try:
                self._run_vacuum(None)
            except JournalError:
                logger.exception("periodic vacuum failed")

    def _submit(self, client: Connection, request: JobRequest) -> None:
        """Accept one job; a v2 producer gets the reply once it is journaled."""
        if self._journal_refuses(client, request.ref):
            return
        hub = self._hub
        decisions = self._core.submit(
            request.payload,
            hub.clock(),
            hub.wall(),
            stored=self._stored([request.payload.job_id, *(request.payload.depends_on or ())]),
            ref=request.ref,
            owner=client.grant.owner,
        )
        reply = decisions[0]
        if isinstance(reply, SendReply) and isinstance(reply.message, Accepted):
            ids = [reply.message.id, *(reply.message.runs or ())]
            hub.subscribe_submitted(client, ids, decisions)
        hub.apply(decisions, client)

    def _submit_many(self, client: Connection, request: SubmitMany) -> None:
        """Accept a batch: every good job journaled in one commit, one result per job."""
        if self._journal_refuses(client, request.ref):
            return
        hub = self._hub
        payloads = _decode_jobs(request.jobs)
        stored = self._stored(
            i
            for p in payloads
            if isinstance(p, JobPayload)
            for i in [p.job_id, *(p.depends_on or ())]
        )
        decisions = self._core.submit_many(
            payloads,
            hub.clock(),
            hub.wall(),
            stored=stored,
            ref=request.ref,
            owner=client.grant.owner,
        )
        reply = decisions[0]
        if isinstance(reply, SendReply) and isinstance(reply.message, SubmittedMany):
            results = reply.message.results
            ids = (i for r in results if r.id for i in [r.id, *(r.runs or ())])
            hub.subscribe_submitted(client, ids, decisions)
        hub.apply(decisions, client)

    def _journal_refuses(self, client: Connection, ref: str | int | None) -> bool:
        """Refuse a submit while the journal fails to commit; return whether it did."""
        failure = self._hub.journal.failure
        if failure is None:
            return False
        why = f"{journal_problem(failure)}; submit refused"
        if client.protocol == 2:
            client.send_now(Error(message=why, ref=ref))
        else:
            logger.warning("%s: refused job: %s", client.outbox.label, why)
        return True

    def _cancel(self, client: Connection, request: Cancel) -> None:
        """Cancel a job; the reply says what happened."""
        stored = None if self._core.tracks(request.id) else self._hub.journal.get(request.id)
        decisions = self._core.cancel(
            request.id,
            self._hub.wall(),
            stored=stored,
            ref=request.ref,
            by=owner_filter(client.grant),
        )
        self._hub.apply(decisions, client)

    def _watch(self, client: Connection, request: Watch) -> None:
        """Subscribe ``client`` to jobs' events and reply with the status of each (the
        jobs only the journal knows read in one query)."""
        wall = self._hub.wall()
        jobs: list[JobEvent] = []
        unknown: list[str] = []
        journal = self._hub.journal
        with journal.reading_ahead(self._untracked(request.ids)):
            for job_id in request.ids:
                stored = None if self._core.tracks(job_id) else journal.get(job_id)
                event = self._core.watch(job_id, wall, stored=stored, by=owner_filter(client.grant))
                if isinstance(event, Error):
                    client.send(msgspec.structs.replace(event, ref=request.ref))
                    return
                if event is None:
                    unknown.append(job_id)
                    continue
                jobs.append(event)
        for event in jobs:
            self._hub.subscribe(client, event.id)
        client.send(Watching(jobs=jobs, unknown=unknown, ref=request.ref))

    def _vacuum(self, client: Connection, request: Vacuum) -> None:
        """Delete final jobs past their retention (or ``older_than_s``) and reply the counts."""
        try:
            deleted = self._run_vacuum(request.older_than_s)
        except JournalError as exc:
            logger.error("vacuum failed: %s", exc)
            client.send(Error(message=f"vacuum failed: {exc}", ref=request.ref))
            return
        client.send(Vacuumed(deleted=deleted, ref=request.ref))

    def _stats(self, client: Connection, request: GetStats) -> None:
        """Reply with the core's snapshot of the bus and every scheduler."""
        now = self._hub.clock()
        client.send(self._core.stats(now, now - self._hub.started_at, ref=request.ref))

    def _list_jobs(self, client: Connection, request: ListJobs) -> None:
        """Reply with the status of the jobs ``client`` may see that ``request`` wants."""
        try:
            client.send(self.job_list(request, client.grant))
        except JournalError as exc:
            logger.error("listing jobs failed: %s", exc)
            client.send(Error(message=f"listing jobs failed: {exc}", ref=request.ref))

    def job_list(self, request: ListJobs, grant: Grant) -> JobList:
        """The answer to ``request`` from a client with ``grant`` (the ``list_jobs``
        command's, and the dashboard's ``/api/jobs``): the tracked jobs it may see that
        the request wants, and the journal's final ones if it asks for them. Raise
        :class:`JournalError` if the journal cannot be read."""
        query = JobQuery.of(request, owner_filter(grant))
        final = query.within(FINAL_EVENTS) if request.final else None
        newest_first = request.newest_first
        stored = (
            []
            if final is None
            else self._hub.journal.find(final, request.limit + 1, newest_first=newest_first)
        )
        jobs, more = self._core.listed(
            query, request.limit, self._hub.wall(), stored=stored, newest_first=newest_first
        )
        return JobList(jobs=jobs, more=more, ref=request.ref)

    def _retry(self, client: Connection, request: Retry) -> None:
        """Run final jobs again; the reply lists those retried and why others were not."""
        hub = self._hub
        stored = self._stored(request.ids)
        stored |= self._stored(d for job in stored.values() for d in job.payload.depends_on or ())
        decisions = self._core.retry(
            request.ids,
            hub.clock(),
            hub.wall(),
            stored=stored,
            ref=request.ref,
            by=owner_filter(client.grant),
        )
        reply = decisions[0]
        if isinstance(reply, SendReply) and isinstance(reply.message, Retried):
            for event in reply.message.jobs:
                hub.subscribe(client, event.id)
        hub.apply(decisions, client)

    def _report(self, client: Connection, report: Report) -> None:
        hub = self._hub
        hub.apply(self._core.report(client.name, report, hub.clock(), hub.wall()))

    def _heartbeat(self, client: Connection, beat: Heartbeat) -> None:
        self._core.heartbeat(client.name, beat.running, beat.queued, self._hub.clock())

    def reading_ahead(self, messages: Iterable[object]) -> AbstractContextManager[None]:
        """While the messages of one frame are handled: the journal reads the jobs their
        submits look up (ids, and the jobs they depend on, that the core does not track)
        in one query instead of one each."""
        return self._hub.journal.reading_ahead(
            self._untracked(
                job_id
                for message in messages
                if isinstance(message, JobRequest)
                for job_id in (message.payload.job_id, *(message.payload.depends_on or ()))
            )
        )

    def _untracked(self, job_ids: Iterable[str | None]) -> list[str]:
        """Those of ``job_ids`` the core does not track: only the journal may know them."""
        return [i for i in job_ids if i is not None and not self._core.tracks(i)]

    def _stored(self, job_ids: Iterable[str | None]) -> dict[str, Job]:
        """The journal's records of the given ids that the core no longer tracks (read in
        one query when there are several)."""
        return self._hub.journal.get_many(self._untracked(job_ids))

    def _run_vacuum(self, older_than_s: float | None) -> dict[str, int]:
        config = self._hub.config
        if older_than_s is None:
            retention, default = config.retention, config.retention_default
        else:
            retention, default = {}, older_than_s
        deleted = self._hub.journal.vacuum(self._hub.wall(), retention, default)
        logger.info(
            "vacuum: deleted %d final jobs%s",
            sum(deleted.values()),
            "".join(f", {count} {state}" for state, count in sorted(deleted.items())),
        )
        return deleted


def _decode_jobs(raws: Sequence[msgspec.Raw]) -> list[JobPayload | ProtocolError]:
    """Each job of a batch decoded; a job spelled exactly as the one before it shares its
    decoded payload (frozen): a batch of like jobs then holds one payload, not one each."""
    decoded: list[JobPayload | ProtocolError] = []
    previous: bytes | None = None
    for raw in raws:
        text = bytes(raw)
        if text != previous:
            payload = _decode_job(raw)
        decoded.append(payload)
        previous = text
    return decoded


def _decode_job(raw: msgspec.Raw) -> JobPayload | ProtocolError:
    try:
        return decode_payload(bytes(raw))
    except ProtocolError as exc:
        return exc
