"""Each job's stdout and stderr in a log file of its own, and what the scheduler reads back.

The job process creates ``<root>/<scheduler>/<job id>.<attempt>.log`` and points its
descriptors 1 and 2 at it (:func:`~scheduler.worker.job_progress.enter_job`) before the
task runs, so whatever the task, a C extension or a subprocess writes lands there, not on
the scheduler's terminal. Creating a file costs the file system a journal write (30 µs to
0.5 ms on a busy disk here): the job pays it, not the scheduler's event loop. The
scheduler opens the file to read once it exists and reads what is new from it
(:meth:`JobLog.new_output`) and the tail at the end (:meth:`JobLog.tail`). Old files are
pruned: the newest ``keep`` log files under the root stay (:func:`prune_logs`).
"""

from __future__ import annotations

import codecs
import os
import re
from pathlib import Path
from typing import Final

from scheduler.protocol_types import MAX_OUTPUT_BYTES
from scheduler.worker.lazy_log import lazy_logger

log = lazy_logger(__name__)

DEFAULT_KEEP_LOGS: Final = 1000
"""How many job log files a scheduler keeps under its log root unless told otherwise."""
PRUNE_EVERY: Final = 100
"""A scheduler prunes its log root once per this many log files it opens."""
CHUNK_BYTES: Final = MAX_OUTPUT_BYTES - 4
"""Most bytes read for one output chunk: room is left for a character cut last time."""
SKIPPED: Final = "[{} bytes skipped]\n"
"""What stands in an output chunk for output written faster than it is sent."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def log_name(job_id: str, attempt: int) -> str:
    """The file name of ``attempt`` of ``job_id``'s log: the id with every character
    but letters, digits, ``.``, ``_`` and ``-`` written ``%XX`` (a broadcast run's ``/``,
    say), and no leading dot."""
    safe = _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), job_id)
    if safe.startswith("."):
        safe = "%2E" + safe[1:]
    return f"{safe}.{attempt}.log"


def create_log(path: str) -> int:
    """In the job process: create (or empty) its log file, mode 0600, for appending, and
    its directory (mode 0700) if another scheduler's prune removed it, empty, since its
    scheduler made it; return its descriptor. ``OSError`` if it cannot."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        return os.open(path, flags, 0o600)


class JobLog:
    """One attempt's log file as its scheduler reads it, once the job has created it."""

    def __init__(self, path: Path) -> None:
        """The log at ``path``; nothing is opened yet."""
        self.path = path
        self.fd = -1
        self._sent = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def _opened(self) -> bool:
        """Whether the file is open for reading, opening it if the job has made it."""
        if self.fd < 0:
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
        return True

    def new_output(self, limit: int = CHUNK_BYTES) -> str | None:
        """What was written since the last call, as text of at most ``limit`` bytes (and
        the few bytes of a character the previous call cut), or None if nothing was (or
        no file was made). Output past ``limit`` keeps its newest part, marked with how
        many bytes were skipped."""
        if not self._opened():
            return None
        size = os.fstat(self.fd).st_size
        if size <= self._sent:
            return None
        start = self._sent
        marker = ""
        if size - start > limit:
            # The marker's length with the largest count it may say: it fits the budget.
            start = size - limit + len(SKIPPED.format(size - start))
            marker = SKIPPED.format(start - self._sent)
            self._decoder.reset()
        data = os.pread(self.fd, size - start, start)
        self._sent = start + len(data)
        return marker + self._decoder.decode(data)

    def tail(self, limit: int = MAX_OUTPUT_BYTES) -> str:
        """The last ``limit`` bytes of the file as text (a character cut at the start is
        dropped, bytes that are not UTF-8 are replaced); empty if no file was made."""
        if not self._opened():
            return ""
        size = os.fstat(self.fd).st_size
        start = max(0, size - limit)
        data = os.pread(self.fd, size - start, start)
        if start:
            data = data.lstrip(bytes(range(0x80, 0xC0)))  # continuation bytes of a cut char
        return data.decode(errors="replace")

    def close(self) -> None:
        """Close the scheduler's descriptor (idempotent); the file stays."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class JobLogs:
    """Where one scheduler's job logs go: ``root/<scheduler>/``, pruned to ``keep`` files."""

    def __init__(self, root: Path, scheduler: str, keep: int = DEFAULT_KEEP_LOGS) -> None:
        """Logs of scheduler ``scheduler`` under ``root``; ``ValueError`` if ``keep`` < 1."""
        if keep < 1:
            raise ValueError(f"keep_logs must be >= 1, not {keep}")
        self.root = root
        self.dir = root / log_name(scheduler, 0).removesuffix(".0.log")
        self.keep = keep
        self._opened = 0

    def open(self, job_id: str, attempt: int) -> JobLog:
        """The log of ``attempt`` of ``job_id``, for its job process to create: its
        directory made, a file left at its path by an earlier job of the same id deleted.
        Before the first and every :data:`PRUNE_EVERY` th, prune the root to ``keep``
        files with this one. ``OSError`` if the directory cannot be made."""
        if self._opened % PRUNE_EVERY == 0:
            prune_logs(self.root, self.keep - 1)  # room for the file made next
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._opened += 1
        path = self.dir / log_name(job_id, attempt)
        try:
            os.unlink(path)  # a job id used again after a vacuum: not this job's output
        except FileNotFoundError:
            pass
        return JobLog(path)


def _logs_in(directory: str) -> list[tuple[float, str]]:
    """The modification time and path of each ``*.log`` file in ``directory``; none if
    it is gone (another scheduler's prune removed it, or the file, meanwhile)."""
    try:
        with os.scandir(directory) as entries:
            return [
                (e.stat().st_mtime, e.path)
                for e in entries
                if e.name.endswith(".log") and e.is_file(follow_symlinks=False)
            ]
    except FileNotFoundError:
        return []


def prune_logs(root: Path, keep: int) -> int:
    """Delete all but the newest ``keep`` ``*.log`` files in the directories under
    ``root`` (by modification time), and the directories left empty; return how many
    files were deleted. Files that vanish meanwhile are skipped; errors are logged."""
    files: list[tuple[float, str]] = []
    dirs: list[str] = []
    try:
        with os.scandir(root) as entries:
            dirs = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        for directory in dirs:
            files.extend(_logs_in(directory))
    except FileNotFoundError:
        return 0  # no job has written a log under it yet
    except OSError as exc:
        log.warning("cannot list the job logs under %s: %s", root, exc)
        return 0
    files.sort(reverse=True)
    deleted = 0
    for _, path in files[keep:]:
        try:
            os.unlink(path)
            deleted += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot delete old job log %s: %s", path, exc)
    for directory in dirs:
        try:
            os.rmdir(directory)  # only if empty
        except OSError:
            pass
    return deleted
