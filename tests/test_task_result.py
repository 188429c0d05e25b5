"""What a job process leaves for its scheduler, through real pipes: results, exceptions,
cuts, a pipe too small for the record, and readers that must never block."""

from __future__ import annotations

import fcntl
import json
import os
import sys
import traceback
import types
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.protocol_types import MAX_RESULT_BYTES
from scheduler.tasks import run_task
from scheduler.worker.process import JobProcess
from scheduler.worker.task_result import (
    MAX_IMPORTED_NAMES,
    MAX_MESSAGE_BYTES,
    MAX_TRACEBACK_BYTES,
    NOTHING,
    PIPE_BYTES,
    Raised,
    ResultPipe,
    TaskRecord,
    _head,
    _tail,
    _write,
    imported_since,
    parse_record,
    send_exception,
    send_result,
)


@pytest.fixture
def pipe() -> Iterator[ResultPipe]:
    """A real result pipe, closed after the test."""
    made = ResultPipe()
    try:
        yield made
    finally:
        made.close()


def collected(pipe: ResultPipe) -> TaskRecord:
    """What the reader finds once the writer (this process) has let go of the pipe."""
    pipe.forked()
    return pipe.collect()


def raised_by(exc: Exception) -> Raised:
    """The record :func:`send_exception` writes for ``exc`` once raised."""
    made = ResultPipe()
    try:
        raise exc
    except Exception as caught:
        send_exception(made.write_fd, caught)
    record = collected(made)
    assert record.raised is not None and record.result is None
    return record.raised


class TaskFailure(Exception):
    """A user-defined exception type, at module level."""


class Outer:
    class Nested(Exception):
        """A user-defined exception type named by its qualified name."""


# --- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [4, 2.5, "done", True, False, 0, "", [], {}, [1, "a", None], {"rows": [{"x": 1}], "n": None}],
)
def test_a_result_round_trips(pipe: ResultPipe, value: object) -> None:
    assert send_result(pipe.write_fd, value)
    assert collected(pipe) == TaskRecord(result=value)


def test_none_writes_nothing_and_a_pipe_left_empty_collects_nothing(pipe: ResultPipe) -> None:
    assert send_result(pipe.write_fd, None)
    assert collected(pipe) is NOTHING
    assert NOTHING == TaskRecord(result=None, raised=None)


def test_the_largest_result_fits_the_pipe(pipe: ResultPipe) -> None:
    assert fcntl.fcntl(pipe.write_fd, fcntl.F_GETPIPE_SZ) >= PIPE_BYTES
    value = "x" * (MAX_RESULT_BYTES - 2)  # its JSON is exactly the limit
    assert send_result(pipe.write_fd, value)
    assert collected(pipe) == TaskRecord(result=value)


def test_results_msgspec_encodes_arrive_as_their_json(pipe: ResultPipe) -> None:
    assert send_result(pipe.write_fd, {"tags": ("a", "b"), "when": 1.0})
    assert collected(pipe).result == {"tags": ["a", "b"], "when": 1.0}


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (object(), "the task's result is not JSON: "),
        ({"z": complex(1, 2)}, "the task's result is not JSON: "),
        (
            "x" * (MAX_RESULT_BYTES - 1),
            f"the task's result is {MAX_RESULT_BYTES + 1} bytes of JSON;"
            f" the limit is {MAX_RESULT_BYTES}",
        ),
    ],
)
def test_a_result_that_cannot_be_sent_is_a_result_error(
    pipe: ResultPipe, value: object, words: str
) -> None:
    assert not send_result(pipe.write_fd, value)
    raised = collected(pipe).raised
    assert raised is not None
    assert (raised.type, raised.traceback) == ("ResultError", "")
    assert raised.message.startswith(words), raised.message
    assert raised.error == f"ResultError: {raised.message}"


def test_a_result_nested_too_deep_to_encode_is_a_result_error(pipe: ResultPipe) -> None:
    value: list[object] = []
    for _ in range(100_000):
        value = [value]
    assert not send_result(pipe.write_fd, value)
    raised = collected(pipe).raised
    assert raised is not None and raised.type == "ResultError"


async def test_a_forked_job_process_leaves_its_result_and_its_exception(
    pipe: ResultPipe,
) -> None:
    def answer(a: int, *, b: int) -> dict[str, int]:
        return {"sum": a + b, "pid": os.getpid()}

    process = JobProcess(run_task, (answer, (2,), {"b": 3}, "j1", 1), {"result_fd": pipe.write_fd})
    process.start()
    pipe.forked()
    result = await process.wait()
    assert (result.outcome, result.exit_code) == ("exited", 0)
    assert pipe.collect() == TaskRecord(result={"sum": 5, "pid": process.pid})

    def fail() -> None:
        raise TaskFailure("no luck")

    failing = ResultPipe()
    process = JobProcess(run_task, (fail, (), {}, "j2", 1), {"result_fd": failing.write_fd})
    process.start()
    failing.forked()
    result = await process.wait()
    assert (result.outcome, result.exit_code) == ("exited", 1)
    raised = failing.collect().raised
    assert raised is not None
    assert raised.error == f"{__name__}.TaskFailure: no luck"
    assert "in fail\n" in raised.traceback


# --- exceptions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "name"),
    [
        (ValueError("bad"), "ValueError"),
        (KeyError("k"), "KeyError"),
        (TaskFailure("bad"), f"{__name__}.TaskFailure"),
        (Outer.Nested("bad"), f"{__name__}.Outer.Nested"),
        (json.JSONDecodeError("bad", "{", 0), "json.decoder.JSONDecodeError"),
    ],
)
def test_exception_types_are_named_builtins_bare_others_by_module(
    exc: Exception, name: str
) -> None:
    assert raised_by(exc).type == name


def test_an_exception_record_has_its_message_and_traceback() -> None:
    def innermost() -> None:
        raise TaskFailure("disk full")

    made = ResultPipe()
    try:
        innermost()
    except TaskFailure as exc:
        send_exception(made.write_fd, exc)
    raised = collected(made).raised
    assert raised is not None
    assert raised.message == "disk full"
    assert raised.traceback.startswith("Traceback (most recent call last):\n")
    assert "in innermost\n" in raised.traceback
    assert raised.traceback.endswith(f"{__name__}.TaskFailure: disk full\n")


def test_an_exception_never_raised_still_has_a_record() -> None:
    made = ResultPipe()
    send_exception(made.write_fd, ValueError("made, not raised"))
    assert collected(made).raised == Raised(
        "ValueError", "made, not raised", "ValueError: made, not raised\n"
    )


@pytest.mark.parametrize(
    ("raised", "error"),
    [
        (Raised("ValueError", "bad", "tb"), "ValueError: bad"),
        (Raised("mypkg.Bad", "", "tb"), "mypkg.Bad"),
    ],
)
def test_error_reads_like_the_last_line_of_a_traceback(raised: Raised, error: str) -> None:
    assert raised.error == error


def test_a_long_message_is_cut_at_the_byte_limit_and_marked() -> None:
    message = "a" + "\u00e9" * MAX_MESSAGE_BYTES  # 2 bytes each: the cut splits one
    raised = raised_by(ValueError(message))
    assert raised.message.endswith(" [cut]")
    kept = raised.message.removesuffix(" [cut]")
    assert message.startswith(kept)
    assert len(kept.encode()) == MAX_MESSAGE_BYTES - 1, "the split character is dropped"
    assert raised.error == f"ValueError: {raised.message}"


def test_a_message_at_the_limit_is_kept_whole() -> None:
    message = "m" * MAX_MESSAGE_BYTES
    assert _head(message, MAX_MESSAGE_BYTES) == message
    assert _head(message + "!", MAX_MESSAGE_BYTES) == message + " [cut]"
    assert raised_by(ValueError(message)).message == message


def test_a_long_traceback_keeps_its_innermost_frames() -> None:
    def ping(n: int) -> None:
        if n == 0:
            innermost_frame()
        pong(n - 1)

    def pong(n: int) -> None:
        ping(n)

    def innermost_frame() -> None:
        raise TaskFailure("deep down")

    def outermost_frame() -> None:
        ping(300)  # alternating frames: Python cannot fold them into "repeated N times"

    made = ResultPipe()
    try:
        outermost_frame()
    except TaskFailure as exc:
        whole = "".join(traceback.format_exception(exc))
        send_exception(made.write_fd, exc)
    assert len(whole.encode()) > MAX_TRACEBACK_BYTES
    raised = collected(made).raised
    assert raised is not None
    assert raised.traceback.startswith("[start cut]\n")
    kept = raised.traceback.removeprefix("[start cut]\n")
    assert whole.endswith(kept)
    assert len(kept.encode()) == MAX_TRACEBACK_BYTES
    assert "in innermost_frame\n" in kept and "in outermost_frame\n" not in kept
    assert kept.endswith(f"{__name__}.TaskFailure: deep down\n")


def test_tail_leaves_short_text_alone_and_never_splits_a_character() -> None:
    assert _tail("short") == "short"
    text = "\u00e9" * MAX_TRACEBACK_BYTES + "z"  # odd byte count: the cut splits one
    kept = _tail(text).removeprefix("[start cut]\n")
    assert text.endswith(kept) and kept.endswith("\u00e9z")
    assert len(kept.encode()) == MAX_TRACEBACK_BYTES - 1


# --- the pipe --------------------------------------------------------------------------


@pytest.fixture
def small_pipe() -> Iterator[tuple[int, int]]:
    """A raw pipe shrunk to one page, its write end non-blocking (a write that would
    block fails at once instead of hanging the test)."""
    read_fd, write_fd = os.pipe()
    try:
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
        assert fcntl.fcntl(write_fd, fcntl.F_GETPIPE_SZ) == 4096
        os.set_blocking(write_fd, False)
        yield read_fd, write_fd
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_a_record_larger_than_the_pipe_is_replaced_by_one_that_fits(
    small_pipe: tuple[int, int],
) -> None:
    read_fd, write_fd = small_pipe
    record = b"R" + msgspec.json.encode("x" * 10_000)
    _write(write_fd, record)
    parsed = parse_record(os.read(read_fd, 65536))
    assert parsed.raised == Raised(
        "ResultError", f"the task's record ({len(record)} bytes) does not fit its result pipe", ""
    )


def test_a_record_that_fits_a_small_pipe_is_written_whole(small_pipe: tuple[int, int]) -> None:
    read_fd, write_fd = small_pipe
    record = b"R" + msgspec.json.encode("y" * 4000)
    _write(write_fd, record)
    assert os.read(read_fd, 65536) == record


def test_collect_does_not_wait_for_another_holder_of_the_write_end(pipe: ResultPipe) -> None:
    # What a grandchild the job left running does: keep its inherited write end open.
    other_holder = os.dup(pipe.write_fd)
    try:
        assert send_result(pipe.write_fd, {"n": 1})
        assert collected(pipe) == TaskRecord(result={"n": 1})
        empty = ResultPipe()
        second_holder = os.dup(empty.write_fd)
        try:
            assert collected(empty) is NOTHING
        finally:
            os.close(second_holder)
    finally:
        os.close(other_holder)


def test_close_and_forked_are_idempotent_and_collect_closes_the_pipe() -> None:
    made = ResultPipe()
    write_fd = made.write_fd
    made.forked()
    made.forked()
    assert made.write_fd == -1
    with pytest.raises(OSError):
        os.fstat(write_fd)
    assert made.collect() is NOTHING
    made.close()
    unused = ResultPipe()
    unused.close()
    unused.close()
    assert unused.write_fd == -1


# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"X", b"Xabc", b"R", b"R{", b"R\xff", b"E{}", b'E{"type": 1}', b"E[]", b"\x00\x01"],
)
def test_garbage_is_a_result_error_naming_its_size(data: bytes) -> None:
    assert parse_record(data) == TaskRecord(
        raised=Raised("ResultError", f"the job process left {len(data)} unreadable bytes", "")
    )


def test_nothing_parses_as_nothing() -> None:
    assert parse_record(b"") is NOTHING


def test_deeply_nested_json_is_a_result_error_not_a_crash() -> None:
    data = b"R" + b"[" * 100_000 + b"]" * 100_000
    record = parse_record(data)
    assert record.raised is not None and record.raised.type == "ResultError"


@given(st.binary(max_size=300))
def test_parse_never_raises(data: bytes) -> None:
    record = parse_record(data)
    assert isinstance(record, TaskRecord)
    assert record.result is None or record.raised is None


json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@given(json_values)
def test_any_json_value_round_trips_through_parse(value: Any) -> None:
    assert parse_record(b"R" + msgspec.json.encode(value)) == TaskRecord(result=value)


# --- the modules a task imported ----------------------------------------------------------


def test_the_modules_a_task_imported_come_before_its_result_or_exception(
    pipe: ResultPipe,
) -> None:
    assert send_result(pipe.write_fd, [1, 2], ["colorsys", "numpy.random"])
    assert collected(pipe) == TaskRecord(result=[1, 2], imported=("colorsys", "numpy.random"))
    alone = ResultPipe()
    assert send_result(alone.write_fd, None, ["colorsys"])
    assert collected(alone) == TaskRecord(imported=("colorsys",))
    failed = ResultPipe()
    try:
        raise ValueError("bad")
    except ValueError as exc:
        send_exception(failed.write_fd, exc, ["colorsys"])
    record = collected(failed)
    assert record.imported == ("colorsys",) and record.raised is not None
    assert record.raised.error == "ValueError: bad"


def test_a_task_that_imported_nothing_and_returned_none_writes_nothing(pipe: ResultPipe) -> None:
    assert send_result(pipe.write_fd, None, [])
    assert collected(pipe) is NOTHING


def test_imported_since_lists_the_modules_added_after_a_count_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded = len(sys.modules)
    assert imported_since(loaded) == []
    monkeypatch.setitem(sys.modules, "fake_one", types.ModuleType("fake_one"))
    monkeypatch.setitem(sys.modules, "fake_two", types.ModuleType("fake_two"))
    assert imported_since(loaded) == ["fake_one", "fake_two"]
    for n in range(MAX_IMPORTED_NAMES + 5):
        monkeypatch.setitem(sys.modules, f"fake_many_{n}", types.ModuleType("x"))
    assert len(imported_since(loaded)) == MAX_IMPORTED_NAMES


def test_a_broken_list_of_names_loses_the_names_not_the_record() -> None:
    assert parse_record(b'I["a", 1]\0R[3]') == TaskRecord(result=[3])
    assert parse_record(b"I{\0E") == TaskRecord(
        raised=Raised("ResultError", "the job process left 1 unreadable bytes", "")
    )


@given(st.binary(max_size=100), st.binary(max_size=100))
def test_parse_never_raises_on_a_names_section(names: bytes, rest: bytes) -> None:
    record = parse_record(b"I" + names + b"\0" + rest)
    assert isinstance(record, TaskRecord)
    assert all(isinstance(name, str) for name in record.imported)
