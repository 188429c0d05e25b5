"""A job's log file as its scheduler reads it: new output in bounded chunks, the tail,
safe file names, and pruning to the newest files."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from scheduler.worker.job_output import JobLog, JobLogs, create_log, log_name, prune_logs


def made(path: Path) -> tuple[JobLog, int]:
    """The scheduler's view of a log at ``path``, and the job's descriptor of it."""
    return JobLog(path), create_log(str(path))


def write(fd: int, data: bytes) -> None:
    os.write(fd, data)


def test_new_output_comes_once_and_a_cut_character_waits(tmp_path: Path) -> None:
    log = JobLog(tmp_path / "j.1.log")
    assert log.new_output() is None and log.tail() == "", "the job has made no file yet"
    fd = create_log(str(log.path))
    assert log.new_output() is None
    write(fd, b"hello\n\xc3")
    assert log.new_output() == "hello\n"
    write(fd, b"\xa9!\n")
    assert log.new_output() == "é!\n"
    assert log.new_output() is None
    log.close()
    log.close()


def test_output_past_the_limit_keeps_its_newest_part_marked(tmp_path: Path) -> None:
    log, fd = made(tmp_path / "j.1.log")
    write(fd, b"a" * 1000 + b"b" * 100)
    chunk = log.new_output(limit=200)
    assert chunk is not None and len(chunk.encode()) <= 200
    marker, rest = chunk.split("\n", 1)
    skipped = int(marker.removeprefix("[").split()[0])
    assert marker == f"[{skipped} bytes skipped]"
    assert skipped + len(rest) == 1100 and rest.endswith("b" * 100)


def test_the_tail_is_the_last_bytes_without_a_cut_character(tmp_path: Path) -> None:
    log, fd = made(tmp_path / "j.1.log")
    write(fd, "xé".encode() + b"end\n")
    assert log.tail(limit=4) == "end\n"
    assert log.tail(limit=5) == "end\n", "the é was cut: dropped"
    assert log.tail(limit=100) == "xéend\n"


def test_the_job_makes_its_file_for_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "j.1.log"
    os.close(create_log(str(path)))
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_file_an_earlier_job_of_that_id_left_is_not_read(tmp_path: Path) -> None:
    logs = JobLogs(tmp_path, "w")
    stale = tmp_path / "w" / "j.1.log"
    stale.parent.mkdir()
    stale.write_text("an earlier job's output")
    log = logs.open("j", 1)
    assert log.tail() == "" and not stale.exists()


def test_names_are_safe_file_names() -> None:
    assert log_name("0123abcd", 2) == "0123abcd.2.log"
    assert log_name("nightly/w-1", 1) == "nightly%2Fw-1.1.log"
    assert log_name("..", 1) == "%2E..1.log"
    assert log_name("é", 1) == "%C3%A9.1.log"


def test_prune_keeps_the_newest_files_across_schedulers(tmp_path: Path) -> None:
    for n, scheduler in enumerate(["a", "a", "b", "b", "c"]):
        path = tmp_path / scheduler / f"job{n}.1.log"
        path.parent.mkdir(exist_ok=True)
        path.write_text(str(n))
        os.utime(path, (1000 + n, 1000 + n))
    (tmp_path / "b" / "notes.txt").write_text("not a log")
    assert prune_logs(tmp_path, keep=2) == 3
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.*"))
    assert left == ["b/job3.1.log", "b/notes.txt", "c/job4.1.log"]
    assert not (tmp_path / "a").exists(), "an emptied directory goes"
    assert prune_logs(tmp_path / "missing", keep=1) == 0


def test_job_logs_make_their_directory_and_prune_as_they_open(tmp_path: Path) -> None:
    logs = JobLogs(tmp_path, "host/1", keep=1)
    first = logs.open("j", 1)
    assert first.path == tmp_path / "host%2F1" / "j.1.log"
    assert first.path.parent.is_dir()
    with pytest.raises(ValueError, match="keep_logs must be >= 1, not 0"):
        JobLogs(tmp_path, "x", keep=0)


def test_job_logs_prune_what_earlier_runs_left(tmp_path: Path) -> None:
    old = tmp_path / "host-1" / "j.1.log"
    old.parent.mkdir()
    old.write_text("an earlier run's job")
    os.utime(old, (1000, 1000))
    JobLogs(tmp_path, "host-2", keep=1).open("k", 1)
    assert not old.parent.exists()
    assert (tmp_path / "host-2").is_dir()


def test_a_fresh_log_root_is_made_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logs = JobLogs(tmp_path / "state" / "logs", "s")
    assert logs.open("j", 1).path.parent.is_dir()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_log_directory_emptied_by_another_scheduler_s_prune_is_made_again_by_the_next_job(
    tmp_path: Path,
) -> None:
    a, b = JobLogs(tmp_path, "a", keep=1), JobLogs(tmp_path, "b", keep=1)
    os.close(create_log(str(b.open("old", 1).path)))
    a.open("new", 1)  # its prune deletes b's only log, then b's empty directory
    assert not b.dir.exists()
    later = b.open("later", 1)
    os.close(create_log(str(later.path)))  # as b's next job process does
    assert later.path.is_file()
    assert stat.S_IMODE(b.dir.stat().st_mode) == 0o700, "made again private, as at first"
