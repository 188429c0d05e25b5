"""What a running job tells its scheduler besides its end: its progress and its output.

For each job it starts, the executor asks the :class:`JobFeed` for the job's
:class:`JobChannels` before the fork (a progress pipe and, with a log root, the job's log
file), hands their descriptors to the job process, and tells the feed when the job
started and when it ended. Meanwhile the feed turns what arrives into ``progress`` and
``output`` reports:

* progress lines are read as they come (the pipe is watched by the event loop from
  :data:`WATCH_AFTER_S` after the job's start; a job that ends sooner has its progress
  read once, at its end) and reported at most once per :data:`PROGRESS_INTERVAL_S` per
  job, the latest winning (:class:`~scheduler.policy.throttle.ReportThrottle`);
* the log files are looked at every :data:`OUTPUT_INTERVAL_S`; what is new goes out as
  one ``output`` report per job (at most 4 KiB, the newest part if more was written).

When a job ends, its held progress and its last output go out before its closing report,
which carries the tail of its log (:meth:`JobFeed.ended`). Everything runs on the event
loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from scheduler.policy.throttle import ReportThrottle
from scheduler.protocol import Assignment, Report
from scheduler.worker.job_output import JobLog, JobLogs
from scheduler.worker.job_progress import ProgressPipe

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S: Final = 0.5
"""Shortest time between two progress reports of one job."""
OUTPUT_INTERVAL_S: Final = 0.5
"""Time between two looks at the running jobs' log files (and their output reports)."""
WATCH_AFTER_S: Final = 0.05
"""How long after its start a job's progress pipe is watched at the latest. A short job
ends first and costs the event loop no reader (two ``epoll_ctl`` calls and the selector's
bookkeeping, a tenth of a no-op job's cost to its scheduler); a job that writes more
progress than a pipe holds (64 KiB) that soon waits at most this long."""

_Key = tuple[str, int]
"""A job id and attempt."""
Emit = Callable[[Report, Assignment], None]
"""Receives each progress or output report with the assignment it is about."""


@dataclass(slots=True)
class JobChannels:
    """One job's progress pipe and log file (None without a log root)."""

    progress: ProgressPipe
    log: JobLog | None

    @property
    def log_path(self) -> str | None:
        """The spool the job points its stdout and stderr at."""
        return None if self.log is None else self.log.spool

    def close(self) -> None:
        """Close every descriptor the scheduler holds (idempotent)."""
        self.progress.close()
        if self.log is not None:
            self.log.close()


@dataclass(slots=True)
class _Live:
    assignment: Assignment
    channels: JobChannels


class JobFeed:
    """Progress and output of the running jobs, reported through ``emit``."""

    def __init__(self, logs: JobLogs | None, emit: Emit, clock: Callable[[], float]) -> None:
        """A feed with no job; ``logs`` says where job logs go (None: jobs keep the
        scheduler's stdout and stderr, and no output is reported)."""
        self.logs = logs
        self._emit = emit
        self._clock = clock
        self._throttle: ReportThrottle[_Key, tuple[float, str]] = ReportThrottle(
            PROGRESS_INTERVAL_S
        )
        self._live: dict[_Key, _Live] = {}
        """The running attempts, by job id and attempt (a newer attempt may start while
        an older one's process is still being stopped)."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._unwatched: dict[_Key, None] = {}
        """The running attempts whose progress pipe is not watched yet (an ordered set)."""
        self._watch_timer: asyncio.TimerHandle | None = None

    def open(self, job_id: str, attempt: int) -> JobChannels:
        """Make the channels of ``attempt`` of ``job_id``, before its fork; ``OSError``
        if the pipe cannot be made. A log directory that cannot be made is logged and left
        out: the job then writes to the scheduler's stdout and stderr (as it does if it
        cannot create its log file)."""
        pipe = ProgressPipe()
        job_log = None
        if self.logs is not None:
            try:
                job_log = self.logs.open(job_id, attempt)
            except OSError as exc:
                log.warning("job %s writes to this terminal: no log file: %s", job_id, exc)
        return JobChannels(pipe, job_log)

    def started(self, assignment: Assignment, channels: JobChannels) -> None:
        """The job process of ``assignment`` was forked with ``channels``: watch them (its
        progress pipe within :data:`WATCH_AFTER_S`)."""
        channels.progress.forked()
        key = (assignment.id, assignment.attempt)
        self._live[key] = _Live(assignment, channels)
        self._unwatched[key] = None
        if self._watch_timer is None:
            loop = asyncio.get_running_loop()
            self._watch_timer = loop.call_later(WATCH_AFTER_S, self._watch)
        if channels.log is not None:
            self._arm(self._clock() + OUTPUT_INTERVAL_S)

    def ended(self, assignment: Assignment, report: bool) -> str | None:
        """The process of ``assignment`` is reaped: stop watching it, send (if ``report``)
        its latest progress not yet sent and its last output, close its channels, and
        return the tail of its log (None without a log file or ``report``, or if the job
        wrote nothing)."""
        key = (assignment.id, assignment.attempt)
        live = self._live.pop(key, None)
        if live is None:
            return None
        channels = live.channels
        if key in self._unwatched:
            del self._unwatched[key]
        else:
            asyncio.get_running_loop().remove_reader(channels.progress.read_fd)
        held = self._throttle.flush(key)
        latest = channels.progress.read() or held
        tail = None
        try:
            if report and latest is not None:
                self._emit_progress(live.assignment, latest)
            # A job that wrote nothing costs one look at its spool, not five system calls.
            if report and channels.log is not None and channels.log.wrote():
                self._emit_output(live)
                tail = channels.log.tail()
        except OSError as exc:
            log.warning("cannot read the log of %s: %s", assignment.id, exc)
        finally:
            channels.close()
        return tail

    def shutdown(self) -> None:
        """Stop the timers: the executor shuts down (each job's end still closes it)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watch_timer is not None:
            self._watch_timer.cancel()
            self._watch_timer = None

    def _watch(self) -> None:
        """Watch the progress pipes of the running attempts not watched yet."""
        self._watch_timer = None
        loop = asyncio.get_running_loop()
        for key in self._unwatched:
            loop.add_reader(self._live[key].channels.progress.read_fd, self._readable, key)
        self._unwatched.clear()

    def close(self) -> None:
        """Every job has ended: delete the spools (see :meth:`JobLogs.close`)."""
        if self.logs is not None:
            self.logs.close()

    def _readable(self, key: _Key) -> None:
        """Progress lines arrived from attempt ``key``: report the latest now, or hold it."""
        live = self._live[key]
        pipe = live.channels.progress
        latest = pipe.read()
        if pipe.eof:  # the job closed it: it would read as ready for ever
            asyncio.get_running_loop().remove_reader(pipe.read_fd)
        if latest is None:
            return
        now = self._clock()
        sendable = self._throttle.offer(key, latest, now)
        if sendable is not None:
            self._emit_progress(live.assignment, sendable)
        else:
            due = self._throttle.next_due()
            if due is not None:
                self._arm(due)

    def _arm(self, when: float) -> None:
        """Have :meth:`_tick` run at ``when`` (``clock`` time) unless it runs sooner."""
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        delay = max(0.0, when - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        """Send the held progress that is due and every log's new output; look again
        later while anything is held or a job with a log runs."""
        self._timer = None
        now = self._clock()
        for key, value in self._throttle.take_due(now):
            live = self._live.get(key)
            if live is not None:
                self._emit_progress(live.assignment, value)
        logged = [live for live in self._live.values() if live.channels.log is not None]
        for live in logged:
            try:
                self._emit_output(live)
            except OSError as exc:
                log.warning("cannot read the log of %s: %s", live.assignment.id, exc)
        due = self._throttle.next_due()
        if due is not None:
            self._arm(due)
        if logged:
            self._arm(now + OUTPUT_INTERVAL_S)

    def _emit_progress(self, assignment: Assignment, value: tuple[float, str]) -> None:
        fraction, message = value
        report = Report(
            "progress", assignment.id, assignment.attempt, progress=fraction, message=message
        )
        self._emit(report, assignment)

    def _emit_output(self, live: _Live) -> None:
        assert live.channels.log is not None
        chunk = live.channels.log.new_output()
        if chunk:
            job = live.assignment
            self._emit(Report("output", job.id, job.attempt, output=chunk), job)
