"""The backlog's entries, on plain records: which stand, and in which order they come."""

from __future__ import annotations

import copy

from scheduler.policy.dispatch.backlog import Backlog
from scheduler.policy.job import Job
from scheduler.protocol import JobPayload


def record(job_id: str, seq: int, priority: int = 5) -> Job:
    return Job(job_id, JobPayload(priority=priority, runtime=1.0), seq, 0.0)


def test_standing_entries_come_by_priority_then_arrival() -> None:
    jobs: dict[str, Job] = {}
    backlog = Backlog(jobs)
    for job in (record("late", 3), record("urgent", 4, priority=1), record("early", 1)):
        jobs[job.id] = job
        backlog.push(job)
    assert backlog.ids() == ["urgent", "early", "late"]
    assert backlog.take_all() == ["urgent", "early", "late"] and backlog.ids() == []


def test_entries_of_records_that_left_or_moved_on_do_not_stand() -> None:
    jobs: dict[str, Job] = {}
    backlog = Backlog(jobs)
    for job in (record("gone", 1), record("assigned", 2), record("replaced", 3)):
        jobs[job.id] = job
        backlog.push(job)
    del jobs["gone"]
    jobs["assigned"].state = "assigned"
    jobs["replaced"] = record("replaced", 4)
    assert backlog.ids() == [] and backlog.members() == ([], set())


def test_a_job_back_as_a_new_record_is_not_named_by_its_old_entry() -> None:
    jobs: dict[str, Job] = {}
    backlog = Backlog(jobs)
    old = jobs["x"] = record("x", 1)
    backlog.push(old)
    del jobs["x"]  # cancelled while waiting: it left the core, its entry stays behind
    again = jobs["x"] = copy.copy(old)  # retried: tracked again, queued, held back
    again.seq = 2
    backlog.hold_back(again, 10.0)
    assert backlog.ids() == [] and backlog.members() == ([], {"x"})
