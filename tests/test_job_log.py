"""A job's log file as its scheduler reads it: new output in bounded chunks, the tail,
the spool a job writes to until its output is named, safe file names, and pruning to the
newest files."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from pathlib import Path

import pytest

from scheduler.worker.job_output import (
    SPOOL_PREFIX,
    JobLog,
    JobLogs,
    create_log,
    log_name,
    prune_logs,
)
from scheduler.worker.proc_stat import read_stat


def made(path: Path) -> tuple[JobLog, int]:
    """The scheduler's view of a log named ``path``, and the job's descriptor of its spool."""
    log = JobLog(path, str(path.parent / f"{SPOOL_PREFIX}test"))
    return log, create_log(log.spool)


def started() -> int:
    """When this process started, as spool names carry it."""
    stat = read_stat(os.getpid())
    assert stat is not None
    return stat.started


def names(directory: Path) -> list[str]:
    """The files in ``directory``, spools included."""
    return sorted(p.name for p in directory.iterdir())


def write(fd: int, data: bytes) -> None:
    os.write(fd, data)


def test_new_output_comes_once_and_a_cut_character_waits(tmp_path: Path) -> None:
    log = JobLog(tmp_path / "j.1.log", str(tmp_path / ".spool.1"))
    assert log.new_output() is None and log.tail() == "", "the job has made no file yet"
    fd = create_log(log.spool)
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
    log, fd = made(tmp_path / "j.1.log")
    write(fd, b"out\n")
    log.close()
    assert oct(log.path.stat().st_mode & 0o777) == "0o600"


def test_a_job_that_writes_nothing_leaves_no_file_and_lends_its_spool_to_the_next(
    tmp_path: Path,
) -> None:
    logs = JobLogs(tmp_path, "w")
    quiet = logs.open("quiet", 1)
    os.close(create_log(quiet.spool))
    assert quiet.new_output() is None and quiet.tail() == ""
    quiet.close()
    assert not quiet.path.exists()
    after = logs.open("after", 1)
    assert after.spool == quiet.spool, "the empty spool is lent again"
    fd = create_log(after.spool)
    write(fd, b"mine\n")
    assert after.tail() == "mine\n"
    after.close()
    assert names(logs.dir) == ["after.1.log"], "the spool became its log"
    assert after.path.read_text() == "mine\n"


def test_an_ended_job_is_looked_at_once_and_its_close_trusts_that_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = JobLogs(tmp_path, "w")
    quiet = logs.open("quiet", 1)
    os.close(create_log(quiet.spool))
    looks: list[object] = []
    real_stat, real_fstat = os.stat, os.fstat

    def counted_stat(path: str) -> os.stat_result:
        looks.append(path)
        return real_stat(path)

    def counted_fstat(fd: int) -> os.stat_result:
        looks.append(fd)
        return real_fstat(fd)

    monkeypatch.setattr(os, "stat", counted_stat)
    monkeypatch.setattr(os, "fstat", counted_fstat)
    assert not quiet.wrote()
    quiet.close()
    monkeypatch.undo()
    assert len(looks) == 1, "one stat of the spool, none on close"
    assert not quiet.path.exists() and names(logs.dir) == [Path(quiet.spool).name]
    loud = logs.open("loud", 1)
    assert loud.spool == quiet.spool, "the empty spool is lent again"
    fd = create_log(loud.spool)
    write(fd, b"said\n")
    os.close(fd)
    assert loud.wrote() and loud.tail() == "said\n"
    loud.close()
    assert names(logs.dir) == ["loud.1.log"] and loud.path.read_text() == "said\n"
    unread = logs.open("unread", 1)
    fd = create_log(unread.spool)
    write(fd, b"nobody looked\n")
    os.close(fd)
    assert unread.wrote()
    unread.close()
    assert unread.path.read_text() == "nobody looked\n", "named on close, as before"


def test_output_is_named_when_first_seen_and_the_job_keeps_writing_to_its_file(
    tmp_path: Path,
) -> None:
    logs = JobLogs(tmp_path, "w")
    log = logs.open("j", 1)
    fd = create_log(log.spool)
    write(fd, b"one\n")
    assert not log.path.exists(), "named by the scheduler's look, not by the write"
    assert log.new_output() == "one\n"
    assert names(logs.dir) == ["j.1.log"]
    write(fd, b"two\n")  # the job's descriptor followed the rename
    assert log.new_output() == "two\n"
    assert log.path.read_text() == "one\ntwo\n"
    log.close()
    nxt = logs.open("k", 1)
    nfd = create_log(nxt.spool)
    assert os.fstat(nfd).st_size == 0, "the next job gets a fresh spool, not j's file"
    write(fd, b"three\n")  # through j's descriptor, after j's end: into j's file
    assert log.path.read_text().endswith("three\n") and nxt.tail() == ""
    os.close(fd)
    os.close(nfd)


def test_output_nobody_looked_at_is_named_when_the_log_closes(tmp_path: Path) -> None:
    log, fd = made(tmp_path / "j.1.log")
    write(fd, b"unread\n")
    log.close()
    assert log.path.read_text() == "unread\n" and names(tmp_path) == ["j.1.log"]


def test_a_stopping_scheduler_deletes_its_spools(tmp_path: Path) -> None:
    logs = JobLogs(tmp_path, "w")
    first, second = logs.open("a", 1), logs.open("b", 1)
    for log in (first, second):
        os.close(create_log(log.spool))
        log.close()
    assert len(names(logs.dir)) == 2
    logs.close()
    assert names(logs.dir) == []


def test_spools_a_dead_scheduler_left_are_named_or_deleted_and_live_ones_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    me = f"{os.getpid()}.{started()}"
    directory = tmp_path / "w"
    directory.mkdir()
    (directory / f"{SPOOL_PREFIX}{dead_pid}.123.0.3").write_text("died mid-job\n")
    (directory / f"{SPOOL_PREFIX}{dead_pid}.123.0.4").write_text("")
    live = directory / f"{SPOOL_PREFIX}{me}.99.0"  # another scheduler in this process
    live.write_text("a running job's\n")
    JobLogs(tmp_path, "w").open("j", 1)
    orphan = directory / f"orphaned.spool.{dead_pid}.123.0.3.log"
    assert orphan.read_text() == "died mid-job\n"
    assert names(directory) == sorted([live.name, orphan.name])
    assert str(orphan) in caplog.text


def test_a_scheduler_given_the_pid_of_a_dead_one_names_that_one_s_spools_and_never_reuses_them(
    tmp_path: Path,
) -> None:
    # A restarted container: the same pid, an earlier start, output left behind.
    directory = tmp_path / "w"
    directory.mkdir()
    earlier = f"{SPOOL_PREFIX}{os.getpid()}.{started() - 1}.0.0"
    (directory / earlier).write_text("the earlier scheduler's job\n")
    logs = JobLogs(tmp_path, "w")
    log = logs.open("j", 1)
    assert Path(log.spool).name != earlier
    fd = create_log(log.spool)
    assert log.tail() == "", "a fresh spool, not the earlier one's output"
    os.close(fd)
    orphan = directory / f"orphaned{earlier}.log"
    assert orphan.read_text() == "the earlier scheduler's job\n"


def test_a_relative_log_root_is_made_absolute_before_any_job_can_change_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    log = JobLogs(Path("logs"), "w").open("j", 1)
    assert Path(log.spool).is_absolute() and log.path == tmp_path / "logs" / "w" / "j.1.log"


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
    old = b.open("old", 1)
    fd = create_log(old.spool)
    write(fd, b"old\n")
    os.close(fd)
    old.close()
    a.open("new", 1)  # its prune deletes b's only log, then b's empty directory
    assert not b.dir.exists()
    later = b.open("later", 1)
    fd = create_log(later.spool)  # as b's next job process does
    write(fd, b"later\n")
    os.close(fd)
    later.close()
    assert later.path.is_file()
    assert stat.S_IMODE(b.dir.stat().st_mode) == 0o700, "made again private, as at first"


def test_a_spool_deleted_under_a_running_job_is_still_read_and_never_lent_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logs = JobLogs(tmp_path, "w")
    log = logs.open("j", 1)
    fd = create_log(log.spool)
    assert log.new_output() is None  # the scheduler has the spool open
    os.unlink(log.spool)  # an operator cleaning up hidden files
    write(fd, b"still here\n")
    assert log.new_output() == "still here\n"
    write(fd, b"and more\n")
    assert log.new_output() == "and more\n" and log.tail() == "still here\nand more\n"
    log.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "stays in" in warnings[0].getMessage()
    assert logs.open("k", 1).spool != log.spool, "not lent again"
    os.close(fd)
