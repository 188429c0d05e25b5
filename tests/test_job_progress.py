"""``progress()`` checks its arguments and writes lines a :class:`ProgressPipe` reads
back; outside a job process it does nothing else."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import pytest

from scheduler.tasks import progress
from scheduler.worker import job_progress
from scheduler.worker.job_progress import ProgressPipe


@pytest.fixture
def pipe() -> Iterator[ProgressPipe]:
    made = ProgressPipe()
    job_progress.enter_job(made.write_fd, None)
    try:
        yield made
    finally:
        job_progress.enter_job(-1, None)
        made.close()


@pytest.mark.parametrize(
    ("fraction", "message", "error", "text"),
    [
        (1.5, "", ValueError, "fraction must be from 0.0 to 1.0, not 1.5"),
        (-0.1, "", ValueError, "fraction must be from 0.0 to 1.0, not -0.1"),
        (math.nan, "", ValueError, "fraction must be from 0.0 to 1.0, not nan"),
        (math.inf, "", ValueError, "fraction must be from 0.0 to 1.0, not inf"),
        ("0.5", "", TypeError, "fraction must be a number, not str"),
        (True, "", TypeError, "fraction must be a number, not bool"),
        (0.5, 7, TypeError, "message must be a str, not int"),
        (0.5, "é" * 513, ValueError, "message must be at most 1024 bytes of UTF-8, not 1026"),
        (0.5, "\ud800", ValueError, "message must be valid text"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(
    fraction: object, message: object, error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=f"^progress: {text}"):
        progress(fraction, message)  # type: ignore[arg-type]


def test_outside_a_job_a_good_call_does_nothing() -> None:
    progress(0.5, "fine")
    progress(1, "é" * 512)


def test_lines_come_back_the_latest_winning(pipe: ProgressPipe) -> None:
    assert pipe.read() is None
    progress(0.25, "a")
    progress(0, "")
    progress(1, "done")
    assert pipe.read() == (1.0, "done")
    assert pipe.read() is None
    assert not pipe.eof


def test_a_partial_or_bad_line_is_not_taken(pipe: ProgressPipe) -> None:
    os.write(pipe.write_fd, b'[0.5, "half')
    assert pipe.read() is None
    os.write(pipe.write_fd, b'"]\nnot json\n[2.0, "too far"]\n')
    assert pipe.read() == (0.5, "half")


def test_eof_is_seen_once_every_writer_is_gone(pipe: ProgressPipe) -> None:
    progress(0.5)
    pipe.forked()
    assert pipe.read() == (0.5, "")
    assert pipe.read() is None and pipe.eof
