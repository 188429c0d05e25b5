"""Each job's stdout and stderr in a log file of its own, and what the scheduler reads back.

The job process points its descriptors 1 and 2 at a *spool* file its scheduler lends it
(:func:`~scheduler.worker.job_progress.enter_job`), before the task runs, so whatever the
task, a C extension or a subprocess writes lands there, not on the scheduler's terminal.
Once the scheduler sees output in the spool (it looks every 0.5 s while the job runs, and
at its end), it renames the spool to ``<root>/<scheduler>/<job id>.<attempt>.log``: the
job's descriptors follow the file, so the rest of its output lands there too. A job that
writes nothing leaves no file, and its empty spool is lent to the next job.

Why spools: creating a file and deleting it later each cost the file system a journal write
(14 µs to 0.5 ms of CPU on the disk of the bench), which for a no-op job was a large part of
its cost. Opening an existing empty file writes nothing; a rename costs about what a
create does, and only jobs with output pay it. Nothing writes to a spool after its job
ended: the job's leftovers are killed before its end is reported. The scheduler reads
what is new (:meth:`JobLog.new_output`) and the tail at the end (:meth:`JobLog.tail`). Old
files are pruned: the newest ``keep`` log files under the root stay (:func:`prune_logs`).
"""

from __future__ import annotations

import codecs
import itertools
import os
import re
from pathlib import Path
from typing import Final

from scheduler.protocol_types import MAX_OUTPUT_BYTES
from scheduler.worker.lazy_log import lazy_logger
from scheduler.worker.proc_stat import read_stat

log = lazy_logger(__name__)

DEFAULT_KEEP_LOGS: Final = 1000
"""How many job log files a scheduler keeps under its log root unless told otherwise."""
PRUNE_EVERY: Final = 100
"""A scheduler prunes its log root once per this many log files it opens."""
CHUNK_BYTES: Final = MAX_OUTPUT_BYTES - 4
"""Most bytes read for one output chunk: room is left for a character cut last time."""
SKIPPED: Final = "[{} bytes skipped]\n"
"""What stands in an output chunk for output written faster than it is sent."""
SPOOL_PREFIX: Final = ".spool."
"""How spool files' names start: ``.spool.<scheduler pid>.<its start time>.<n>.<k>``,
hidden, never ``*.log`` (a job log's name never starts with a dot). The pid and start time
(in clock ticks after boot, ``/proc/PID/stat``) name one process: a scheduler given the
same pid as an earlier one (a restarted container, say) names its spools apart from the
spools that one left."""
SPOOL_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
"""How a job process opens its spool. The scheduler lends only empty spools: no
``O_TRUNC``, which would cost a journal write."""
ORPHAN_PREFIX: Final = "orphaned."
"""How the log file of output left in a spool by a scheduler that died starts."""

_instances = itertools.count()
_DECODER: Final = codecs.getincrementaldecoder("utf-8")
"""Makes each log's decoder (looked up once, not per job)."""

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
    """In the job process: open its spool at ``path`` for appending, creating it (mode 0600)
    if it is not there, and its directory (mode 0700) if another scheduler's prune removed
    it, empty, since its scheduler made it; return its descriptor. ``OSError`` if it
    cannot."""
    try:
        return os.open(path, SPOOL_FLAGS, 0o600)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        return os.open(path, SPOOL_FLAGS, 0o600)


class JobLog:
    """One attempt's output as its scheduler reads it: in the spool lent to its job process,
    then in the log file at :attr:`path` once the scheduler has seen output."""

    def __init__(
        self, path: str | os.PathLike[str], spool: str, free: list[str] | None = None
    ) -> None:
        """The log of an attempt whose job writes to ``spool``, named ``path`` at its first
        output; ``free`` gets the spool back when the log is closed. Nothing is opened yet."""
        # Kept as text: a Path per job costs a no-op job's scheduler several microseconds.
        self._path = os.fspath(path)
        self.spool = spool
        self.named = False
        """Whether the spool has become the file at :attr:`path`."""
        self.fd = -1
        self._free = free
        self._closed = False
        self._unnamable = False
        """Renaming the spool failed (someone deleted it, say): its output is still read."""
        self._sent = 0
        self._ended_size: int | None = None
        """The spool's size once :meth:`wrote` looked at the ended job's spool."""
        self._decoder = _DECODER(errors="replace")

    @property
    def path(self) -> Path:
        """Where the output goes once the scheduler has seen some."""
        return Path(self._path)

    def wrote(self) -> bool:
        """Whether the job wrote anything, for a job that has ended: one look at its spool,
        which :meth:`close` then trusts (an ended job writes no more)."""
        self._ended_size = self._size()
        return self._ended_size > 0

    def _opened(self) -> bool:
        """Whether the spool is open for reading, opening it if the job has made it."""
        if self.fd < 0:
            try:
                self.fd = os.open(self.spool, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
        return True

    def _name(self) -> None:
        """The job wrote: rename its spool to :attr:`path` (once; a failure is logged once,
        and the output is still read from the spool)."""
        if self.named or self._unnamable:
            return
        try:
            os.rename(self.spool, self._path)
        except OSError as exc:
            self._unnamable = True
            name = os.path.basename(self._path)
            log.warning("the output of %s stays in %s: %s", name, self.spool, exc)
        else:
            self.named = True

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
        self._name()
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
        """The last ``limit`` bytes of the output as text (a character cut at the start is
        dropped, bytes that are not UTF-8 are replaced); empty if nothing was written."""
        if not self._opened():
            return ""
        size = os.fstat(self.fd).st_size
        if not size:
            return ""
        self._name()
        start = max(0, size - limit)
        data = os.pread(self.fd, size - start, start)
        if start:
            data = data.lstrip(bytes(range(0x80, 0xC0)))  # continuation bytes of a cut char
        return data.decode(errors="replace")

    def close(self) -> None:
        """The job has ended: name its output if it wrote any and nobody looked yet, close
        the scheduler's descriptor and give the spool back (idempotent). A spool whose
        output could not be renamed is left where it is, never lent again."""
        if self._closed:
            return
        self._closed = True
        try:
            if not (self.named or self._unnamable) and (
                self._size() if self._ended_size is None else self._ended_size
            ):
                self._name()
        except OSError as exc:
            self._unnamable = True
            log.warning(
                "cannot look at the output of %s in %s: %s",
                os.path.basename(self._path),
                self.spool,
                exc,
            )
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        if self._free is not None and not self._unnamable:
            self._free.append(self.spool)

    def _size(self) -> int:
        """How many bytes the job wrote to its spool."""
        if self.fd >= 0:
            return os.fstat(self.fd).st_size
        try:
            return os.stat(self.spool).st_size
        except FileNotFoundError:
            return 0


class JobLogs:
    """Where one scheduler's job logs go: ``root/<scheduler>/``, pruned to ``keep`` files."""

    def __init__(self, root: Path, scheduler: str, keep: int = DEFAULT_KEEP_LOGS) -> None:
        """Logs of scheduler ``scheduler`` under ``root`` (made absolute now: a job may
        change its working directory, and in warm mode the next job of its slot would
        start there); ``ValueError`` if ``keep`` < 1."""
        if keep < 1:
            raise ValueError(f"keep_logs must be >= 1, not {keep}")
        self.root = root.absolute()
        self.dir = self.root / log_name(scheduler, 0).removesuffix(".0.log")
        self._dir_text = str(self.dir)
        self.keep = keep
        self._opened = 0
        me = read_stat(os.getpid())
        started = 0 if me is None else me.started
        self._spool_base = f"{SPOOL_PREFIX}{os.getpid()}.{started}.{next(_instances)}."
        self._spools = itertools.count()
        self._free: list[str] = []
        """Spools no running job writes to: absent, or empty."""

    def open(self, job_id: str, attempt: int) -> JobLog:
        """The log of ``attempt`` of ``job_id``, with a spool for its job process: its
        directory made, a file left at its path by an earlier job of the same id deleted.
        Before the first and every :data:`PRUNE_EVERY` th, prune the root to ``keep``
        files with this one (and, the first time, name what dead schedulers left in their
        spools). ``OSError`` if the directory cannot be made."""
        if self._opened % PRUNE_EVERY == 0:
            if not self._opened:
                name_orphaned_spools(self.dir)
            prune_logs(self.root, self.keep - 1)  # room for the file made next
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._opened += 1
        path = f"{self._dir_text}/{log_name(job_id, attempt)}"
        try:
            os.unlink(path)  # a job id used again after a vacuum: not this job's output
        except FileNotFoundError:
            pass
        return JobLog(path, self._free.pop() if self._free else self._new_spool(), self._free)

    def _new_spool(self) -> str:
        """A spool path no job of this scheduler has had."""
        return f"{self._dir_text}/{self._spool_base}{next(self._spools)}"

    def close(self) -> None:
        """Delete the spools no job writes to (every job has ended): the scheduler stops."""
        for spool in self._free:
            try:
                os.unlink(spool)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot delete the job log spool %s: %s", spool, exc)
        self._free.clear()


def name_orphaned_spools(directory: Path) -> None:
    """Give the output a dead scheduler left in its spools in ``directory`` a log file of
    its own, ``orphaned.<spool>.log``, and delete its empty spools. Its jobs died with it
    before their output was named; which jobs they were is not known."""
    try:
        with os.scandir(directory) as entries:
            spools = [e for e in entries if e.name.startswith(SPOOL_PREFIX)]
    except FileNotFoundError:
        return
    for spool in spools:
        if _alive(*spool.name.removeprefix(SPOOL_PREFIX).split(".")[:2]):
            continue
        try:
            if spool.stat().st_size:
                orphan = os.path.join(directory, f"{ORPHAN_PREFIX}{spool.name[1:]}.log")
                os.rename(spool.path, orphan)
                log.warning("output a dead scheduler's job left unnamed is kept in %s", orphan)
            else:
                os.unlink(spool.path)
        except FileNotFoundError:
            pass  # another scheduler named it meanwhile
        except OSError as exc:
            log.warning("cannot name the spool %s: %s", spool.path, exc)


def _alive(pid: str, started: str = "") -> bool:
    """Whether the process ``pid`` that started at ``started`` (both as digits, from a
    spool's name) is running; True if that cannot be told."""
    if not (pid.isdigit() and started.isdigit()):
        return True  # not a spool this code names: leave it alone
    stat = read_stat(pid)
    return stat is not None and stat.started == int(started)


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
