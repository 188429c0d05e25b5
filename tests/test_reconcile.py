"""Reconciling a re-registering scheduler's ``held`` list."""

from __future__ import annotations

from scheduler.policy.job import Job
from scheduler.policy.reconcile import reconcile
from scheduler.protocol import Held, JobPayload, Stop
from scheduler.protocol_types import JobState


def job(job_id: str, holder: str | None, attempt: int) -> Job:
    payload = JobPayload(priority=1, runtime=1.0)
    state: JobState = "queued" if holder is None else "running"
    return Job(job_id, payload, 0, 0.0, state=state, attempt=attempt, holder=holder)


def test_keep_stop_and_lost() -> None:
    jobs = {
        "mine": job("mine", "s1", 2),
        "done": job("done", "s1", 1),
        "moved": job("moved", "s2", 3),
        "newer": job("newer", "s1", 4),
        "queued": job("queued", None, 1),
        "forgotten": job("forgotten", "s1", 1),
    }
    held = [
        Held("mine", 2),
        Held("mine", 2),  # listed twice: counts once
        Held("done", 1, done=True),
        Held("moved", 2),
        Held("newer", 3),
        Held("queued", 1),
        Held("gone", 5),
    ]
    holding = {"mine", "done", "newer", "forgotten"}
    outcome = reconcile("s1", held, jobs, holding)
    assert outcome.keep == [Held("mine", 2), Held("done", 1, done=True)]
    assert outcome.stop == [
        Stop("moved", 2, "the job was reassigned to s2"),
        Stop("newer", 3, "stale attempt 3 (current 4)"),
        Stop("queued", 1, "the job was requeued"),
        Stop("gone", 5, "the job is final or unknown"),
    ]
    assert sorted(outcome.lost) == ["forgotten", "newer"]


def test_a_stranger_is_told_to_stop_everything() -> None:
    outcome = reconcile("late", [Held("j", 1)], {"j": job("j", "other", 2)}, set())
    assert outcome.keep == [] and outcome.lost == []
    assert [stop.id for stop in outcome.stop] == ["j"]
