"""What a job process leaves for its scheduler: the task's JSON result, or the exception
it raised, sent through a pipe made for that one job.

The job process writes one record just before it exits; the scheduler reads it once the
process has been reaped, without blocking (a grandchild may still hold the pipe open).
The pipe is made large enough to hold the largest record, so the job never blocks on
writing it and the scheduler never has to watch the pipe while the job runs.

A record is one byte of kind and a JSON body: ``R`` and the result, or ``E`` and a
:class:`Raised`. It may be preceded by ``I``, a JSON list of the modules the task imported
(:func:`imported_since`) and a NUL byte (which JSON never holds unescaped).
"""

from __future__ import annotations

import fcntl
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from scheduler.protocol_types import MAX_RESULT_BYTES

MAX_MESSAGE_BYTES: Final = 4 * 1024
"""An exception's message is cut to this many bytes of UTF-8."""
MAX_TRACEBACK_BYTES: Final = 32 * 1024
"""A traceback is cut to its last this many bytes of UTF-8 (its innermost frames)."""
PIPE_BYTES: Final = 128 * 1024
"""The capacity asked for each result pipe: the largest record fits with room to spare."""
MAX_IMPORTED_NAMES: Final = 50
"""Most module names a record carries (the first ones imported)."""

_RESULT: Final = b"R"
_RAISED: Final = b"E"
_IMPORTED: Final = b"I"
_IMPORTED_END: Final = b"\0"
# A pipe smaller than this (the kernel's minimum) is never asked about.
_SMALLEST_PIPE: Final = 4096


class Raised(msgspec.Struct, frozen=True):
    """An exception that ended a task: its type's qualified name (``ValueError``,
    ``mypkg.errors.Bad``), its message and the formatted traceback."""

    type: str
    message: str
    traceback: str

    @property
    def error(self) -> str:
        """``Type: message``, as the last line of a traceback reads."""
        return f"{self.type}: {self.message}" if self.message else self.type


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """What a job process left: the task's ``result`` (None if it returned None or left
    nothing), or the exception it ``raised``; and the modules the task ``imported`` (the
    first :data:`MAX_IMPORTED_NAMES`), which its process did not have when it started."""

    result: object = None
    raised: Raised | None = None
    imported: tuple[str, ...] = ()


NOTHING: Final = TaskRecord()
"""The record of a job process that wrote none (returned None, exited, was killed)."""

_encoder = msgspec.json.Encoder()
_raised_decoder = msgspec.json.Decoder(Raised)
_names_decoder = msgspec.json.Decoder(list[str])


def imported_since(loaded: int) -> list[str]:
    """In the job process: the modules imported since ``sys.modules`` held ``loaded``
    entries (the first :data:`MAX_IMPORTED_NAMES`; a dict keeps its insertion order).
    Costs a length check when nothing was imported."""
    if len(sys.modules) <= loaded:
        return []
    return list(sys.modules)[loaded : loaded + MAX_IMPORTED_NAMES]


class ResultPipe:
    """The pipe one job process writes its record to.

    Made before the fork: the child writes to :attr:`write_fd` (see :func:`send_result`
    and :func:`send_exception`); the parent calls :meth:`forked` right after the fork and
    :meth:`collect` once the child is reaped, or :meth:`close` if the fork failed. A warm
    slot process keeps one for all its jobs and :meth:`take` s each job's record.
    """

    def __init__(self) -> None:
        """Open the pipe, its read end non-blocking, with room for the largest record."""
        self._read_fd, self.write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        try:
            fcntl.fcntl(self._read_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # over the user's pipe quota: the child sees the smaller pipe and says so

    def forked(self) -> None:
        """Close the parent's copy of the write end: only the job process writes."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    @property
    def read_fd(self) -> int:
        """The read end (-1 once closed)."""
        return self._read_fd

    def take(self) -> bytes:
        """What the pipe holds now, read without blocking; the pipe stays open. Raises
        ``OSError`` if the read end is no longer a descriptor."""
        chunks = []
        try:
            while chunk := os.read(self._read_fd, PIPE_BYTES):
                chunks.append(chunk)
        except BlockingIOError:
            pass  # all read; a process the job left behind may still hold the write end
        return b"".join(chunks)

    def collect(self) -> TaskRecord:
        """Read the record the reaped job process left (:data:`NOTHING` if none) and close
        the pipe. A record that does not parse is reported as an error of the job."""
        try:
            data = self.take()
        finally:
            self.close()
        return parse_record(data)

    def close(self) -> None:
        """Close both ends (idempotent)."""
        self.forked()
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1


def send_result(fd: int, value: object, imported: Sequence[str] = ()) -> bool:
    """In the job process: write ``value`` as the task's JSON result to ``fd``, after the
    names of the modules the task ``imported`` if any.

    Nothing is written for None and no imports. Returns False, having written an
    exception record instead, if ``value`` is not JSON-encodable, its JSON is larger than
    :data:`~scheduler.protocol_types.MAX_RESULT_BYTES`, or it does not fit the pipe; the job
    then fails saying so.
    """
    if value is None:
        return not imported or _write(fd, b"", imported)
    try:
        body = _encoder.encode(value)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        _write(fd, _raised_record(_result_error(f"the task's result is not JSON: {exc}")), imported)
        return False
    if len(body) > MAX_RESULT_BYTES:
        message = f"the task's result is {len(body)} bytes of JSON; the limit is {MAX_RESULT_BYTES}"
        _write(fd, _raised_record(_result_error(message)), imported)
        return False
    return _write(fd, _RESULT + body, imported)


def send_exception(fd: int, exc: BaseException, imported: Sequence[str] = ()) -> None:
    """In the job process: write ``exc`` (type, message, traceback) to ``fd``, after the
    names of the modules the task ``imported`` if any."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    text = "".join(traceback.format_exception(exc))
    raised = Raised(name, _head(str(exc), MAX_MESSAGE_BYTES), _tail(text))
    _write(fd, _raised_record(raised), imported)


def _result_error(message: str) -> Raised:
    return Raised("ResultError", message, "")


def _raised_record(raised: Raised) -> bytes:
    return _RAISED + _encoder.encode(raised)


def _write(fd: int, record: bytes, imported: Sequence[str] = ()) -> bool:
    """Write the whole ``record`` (after the ``imported`` names, if any) and return True;
    if the pipe cannot hold it (the kernel refused the size asked for), write a short
    record saying so, which always fits, and return False."""
    if imported:
        record = _IMPORTED + _encoder.encode(imported) + _IMPORTED_END + record
    fits = len(record) <= _SMALLEST_PIPE or len(record) <= fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    if not fits:
        message = f"the task's record ({len(record)} bytes) does not fit its result pipe"
        record = _raised_record(_result_error(message))
    view = memoryview(record)
    while view:
        view = view[os.write(fd, view) :]
    return fits


def parse_record(data: bytes) -> TaskRecord:
    """The record in ``data``, as a job process wrote it (:data:`NOTHING` if empty); a
    record that does not parse is an error of the job."""
    imported: tuple[str, ...] = ()
    if data[:1] == _IMPORTED and _IMPORTED_END in data:
        names, _, data = data[1:].partition(_IMPORTED_END)
        try:
            imported = tuple(_names_decoder.decode(names)[:MAX_IMPORTED_NAMES])
        except msgspec.DecodeError:
            pass  # a record with a broken list of names: the names are lost, not the record
    if not data:
        return TaskRecord(imported=imported) if imported else NOTHING
    kind, body = data[:1], data[1:]
    try:
        if kind == _RESULT:
            return TaskRecord(result=msgspec.json.decode(body), imported=imported)
        if kind == _RAISED:
            return TaskRecord(raised=_raised_decoder.decode(body), imported=imported)
    except (msgspec.DecodeError, RecursionError):  # nesting deeper than this stack
        pass
    message = f"the job process left {len(data)} unreadable bytes"
    return TaskRecord(raised=_result_error(message), imported=imported)


def _head(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, marked if cut."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit].decode(errors="ignore") + " [cut]"


def _tail(text: str) -> str:
    """``text`` without its beginning if it is over :data:`MAX_TRACEBACK_BYTES`."""
    data = text.encode()
    if len(data) <= MAX_TRACEBACK_BYTES:
        return text
    return "[start cut]\n" + data[-MAX_TRACEBACK_BYTES:].decode(errors="ignore")
