"""Following the jobs a producer command submitted: their events until each is final,
shown through a :class:`FollowView` (one line or one JSON object per finished job here; a
progress bar in :mod:`.progress_view`), reminders about jobs whose task nobody serves, and
the closing summary."""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import sys
from collections import Counter
from typing import Protocol

import click

from scheduler.cli_support import shorten
from scheduler.ids import short_id
from scheduler.producer.client import ProducerClient
from scheduler.producer.tally import Tally
from scheduler.producer.tracking import JobRecord, JobTracker

log = logging.getLogger("scheduler.producer")


class FollowView(Protocol):
    """How a producer command shows the jobs it follows."""

    def job_final(self, record: JobRecord) -> None:
        """``record``'s job has just reached its final state."""

    def update(self, tally: Tally) -> None:
        """The counts in ``tally`` changed."""


class PlainView:
    """One log line per finished job (stderr) and, with ``as_json``, one JSON object per
    finished job on stdout: the output scripts and pipes read."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def job_final(self, record: JobRecord) -> None:
        """Write the JSON line (with ``as_json``) and log the outcome."""
        if self.as_json:
            sys.stdout.write(json.dumps(record.as_dict()) + "\n")
            sys.stdout.flush()
        log.info(
            "%s %s%s after %.2fs waiting, %.2fs running, %d evictions%s",
            short_id(record.id),
            record.state,
            "" if record.scheduler is None else f" on {record.scheduler}",
            record.wait_s,
            record.run_s,
            record.evictions,
            _outcome_text(record),
        )

    def update(self, tally: Tally) -> None:
        """Nothing: plain output is one line per finished job."""


class JobFollower:
    """Consumes a producer's events until every job it submitted is final."""

    def __init__(self, view: FollowView, planned: int = 0) -> None:
        self.tracker = JobTracker()
        self.view = view
        self.tally = Tally(planned=planned)
        self.expected: set[str] = set()
        self.finished: dict[str, JobRecord] = {}
        self.tasks: dict[str, str] = {}
        """The task of each expected job."""
        self.unserved: set[str] = set()
        """Tasks the bus warned that no connected scheduler serves."""
        self._submitting = True
        self._complete = asyncio.Event()

    def expect(self, job_id: str, task: str = "sleep", warning: str | None = None) -> None:
        """Count ``job_id`` (a job of ``task``) among the jobs to wait for; log the bus's
        ``warning`` about its submit, once per task."""
        self.expected.add(job_id)
        self.tasks[job_id] = task
        self.tally.expect(job_id)
        self.view.update(self.tally)
        if warning is not None and task not in self.unserved:
            self.unserved.add(task)
            log.warning("%s", warning)

    def expect_runs(self, job_id: str, task: str, runs: list[str] | None) -> None:
        """Count the runs of broadcast ``job_id`` among the jobs to wait for (each is
        reported on its own, then the broadcast itself)."""
        for run in runs or ():
            self.expect(run, task)
        if runs:
            log.info("broadcast %s: %d runs (%s)", short_id(job_id), len(runs), ", ".join(runs))

    def refuse(self) -> None:
        """Count one job of the plan that the bus refused (it is not waited for)."""
        self.tally.refused += 1
        self.view.update(self.tally)

    def waiting_unserved(self) -> Counter[str]:
        """How many expected jobs still wait (queued) for each task the bus warned about."""
        waiting: Counter[str] = Counter()
        for job_id, task in self.tasks.items():
            if task not in self.unserved or job_id in self.finished:
                continue
            record = self.tracker.records.get(job_id)
            if record is None or record.state == "queued":
                waiting[task] += 1
        return waiting

    async def remind(self, every: float) -> None:
        """Every ``every`` seconds, log which jobs wait for a task nobody serves."""
        while True:
            await asyncio.sleep(every)
            for task, count in sorted(self.waiting_unserved().items()):
                log.warning(
                    '%d job%s wait%s for task "%s", which no connected scheduler serves',
                    count,
                    "" if count == 1 else "s",
                    "s" if count == 1 else "",
                    task,
                )

    def all_submitted(self) -> None:
        """No more jobs will be expected; finish once the expected ones are final."""
        self._submitting = False
        self._check()

    @property
    def complete(self) -> bool:
        """True once every job is submitted and every expected one is final (at once if
        none is expected, or if they all ended before the last submit returned)."""
        return self._complete.is_set()

    async def follow(self, client: ProducerClient) -> None:
        """Apply events until every expected job is final."""
        async for event in client.events():
            record = self.tracker.apply(event)
            self.tally.set_state(record.id, record.state)
            if record.final and record.id not in self.finished:
                self.finished[record.id] = record
                self.view.job_final(record)
                self._check()
            self.view.update(self.tally)
            if self._complete.is_set():
                return

    def _check(self) -> None:
        if not self._submitting and self.expected <= self.finished.keys():
            self._complete.set()


def _outcome_text(record: JobRecord) -> str:
    """``: error`` or `` -> result`` (its JSON, shortened) for a log line."""
    if record.error:
        return f": {record.error}"
    return "" if record.result is None else f" -> {shorten(json.dumps(record.result))}"


def summary_text(records: list[JobRecord], refused: int = 0) -> str:
    """One line about the finished jobs: how many ended in each state, evictions, waits,
    and (if any) how many the bus refused."""
    states = Counter(record.state for record in records)
    waits = [record.wait_s for record in records] or [0.0]
    parts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    text = (
        f"{len(records)} jobs final: {parts or 'none'}; "
        f"{sum(record.evictions for record in records)} evictions; "
        f"wait median {statistics.median(waits):.2f}s, max {max(waits):.2f}s"
    )
    return text + (f"; {refused} refused" if refused else "")


def print_summary(records: list[JobRecord], refused: int = 0) -> None:
    """Write :func:`summary_text` to stderr."""
    click.echo(summary_text(records, refused), err=True)


def print_interrupted(follower: JobFollower) -> None:
    """Write to stderr, when ``--wait`` is stopped by a signal, the summary of the jobs that
    ended and how many had not: they keep running on the bus."""
    finished = list(follower.finished.values())
    click.echo(summary_text(finished, follower.tally.refused), err=True)
    left = len(follower.expected) - len(finished)
    click.echo(
        f"interrupted: {left} of {len(follower.expected)} jobs not final; they go on"
        " without this producer (`python -m scheduler.jobs list` shows them)",
        err=True,
    )
