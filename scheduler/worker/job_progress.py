"""A task's progress, sent from its job process to its scheduler through a pipe made for
that one job.

In the job process, :func:`progress` writes one line per call: the JSON array
``[fraction, message]``. A line is at most a few KiB, under the pipe's atomic write size,
so lines from the job and its forked children never interleave. The scheduler reads the
pipe as lines arrive (:class:`ProgressPipe`) and decides how often to tell the bus
(:class:`~scheduler.policy.throttle.ReportThrottle`): the task itself never waits for the
network and may call :func:`progress` as often as it likes.

Outside a job process (a task called directly, in a test or a script) :func:`progress`
checks its arguments and does nothing else.
"""

from __future__ import annotations

import math
import os
from typing import Final

import msgspec

from scheduler.protocol_types import MAX_PROGRESS_MESSAGE_BYTES
from scheduler.worker.job_output import create_log
from scheduler.worker.lazy_log import lazy_logger

__all__ = ["ProgressPipe", "enter_job", "progress"]

log = lazy_logger(__name__)

READ_BYTES: Final = 64 * 1024
"""Most bytes read from a progress pipe at once."""

_channel = -1
"""The write end of this job process's progress pipe; -1 outside a job process."""

_encoder = msgspec.json.Encoder()
_line_decoder = msgspec.json.Decoder(tuple[float, str])


def progress(fraction: float, message: str = "") -> None:
    """Report how far the running task is: ``fraction`` from 0.0 to 1.0, with an optional
    ``message`` (at most 1 KiB of UTF-8), shown by ``monitor``, ``jobs show`` and the
    job's watchers as a ``progress`` event.

    Call it as often as you like: the scheduler sends at most one report per job every
    half second, always the latest, and the last one before the job's final event.
    Raises ``TypeError`` or ``ValueError`` naming the argument and the rule it breaks.
    Outside a job process it checks its arguments and does nothing else.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError(f"progress: fraction must be a number, not {type(fraction).__name__}")
    if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"progress: fraction must be from 0.0 to 1.0, not {fraction!r}")
    if not isinstance(message, str):
        raise TypeError(f"progress: message must be a str, not {type(message).__name__}")
    try:
        size = len(message.encode())
    except UnicodeEncodeError as exc:
        raise ValueError(f"progress: message must be valid text: {exc.reason}") from None
    if size > MAX_PROGRESS_MESSAGE_BYTES:
        raise ValueError(
            f"progress: message must be at most {MAX_PROGRESS_MESSAGE_BYTES} bytes of UTF-8,"
            f" not {size}"
        )
    if _channel < 0:
        return
    line = _encoder.encode((float(fraction), message)) + b"\n"
    view = memoryview(line)
    while view:
        view = view[os.write(_channel, view) :]


def enter_job(progress_fd: int, log_path: str | None) -> None:
    """In a freshly started job process: send :func:`progress` to ``progress_fd`` (-1:
    nowhere), and point descriptors 1 and 2 at the log spool at ``log_path`` (None: keep
    the scheduler's; see :mod:`scheduler.worker.job_output`). A spool that cannot be
    opened leaves them, saying so there."""
    global _channel
    _channel = progress_fd
    if log_path is None:
        return
    try:
        fd = create_log(log_path)
    except OSError as exc:
        os.write(2, f"schedbus: no log file for this job, output stays here: {exc}\n".encode())
        return
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class ProgressPipe:
    """The pipe one job process writes its progress lines to.

    Made before the fork: the child writes to :attr:`write_fd`; the parent calls
    :meth:`forked` right after the fork, :meth:`read` whenever :attr:`read_fd` is
    readable and once the child is reaped, then :meth:`close`.
    """

    def __init__(self) -> None:
        """Open the pipe, its read end non-blocking."""
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self._partial = b""
        self.eof = False
        """True once every write end is closed (the job and its children are gone)."""

    def forked(self) -> None:
        """Close the parent's copy of the write end: only the job process writes."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def read(self) -> tuple[float, str] | None:
        """Read what the pipe holds now; return the latest complete ``(fraction,
        message)`` in it (None if none), and set :attr:`eof` if no writer is left. A line
        that does not parse is logged and skipped."""
        latest: tuple[float, str] | None = None
        try:
            while chunk := os.read(self.read_fd, READ_BYTES):
                *lines, self._partial = (self._partial + chunk).split(b"\n")
                for line in lines:
                    latest = _parse(line) or latest
                if len(chunk) < READ_BYTES:
                    return latest
            self.eof = True
        except BlockingIOError:
            pass
        return latest

    def close(self) -> None:
        """Close both ends (idempotent)."""
        self.forked()
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1


def _parse(line: bytes) -> tuple[float, str] | None:
    try:
        fraction, message = _line_decoder.decode(line)
    except msgspec.DecodeError:
        log.warning("ignoring a progress line that does not parse: %r", line[:80])
        return None
    if not 0.0 <= fraction <= 1.0 or len(message.encode()) > MAX_PROGRESS_MESSAGE_BYTES:
        log.warning("ignoring a progress line out of bounds: %r", line[:80])
        return None
    return fraction, message
