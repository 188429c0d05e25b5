"""The dispatch core serves producers: cancels, client-chosen ids, batches,
validation and owners."""

from __future__ import annotations

import pytest
from dispatch_helpers import (
    LEASE,
    UNSERVED,
    WALL,
    add,
    assigns,
    booked,
    emitted,
    events,
    info,
    job,
    new_core,
    reply,
    report,
    sends,
    stops,
    submit,
)
from msgspec.structs import replace

from scheduler.codec import ProtocolError
from scheduler.policy.dispatch.config import DispatchConfig
from scheduler.policy.dispatch.decisions import (
    Ignored,
    SendReply,
)
from scheduler.policy.job import Job
from scheduler.protocol import (
    Accepted,
    CancelReply,
    Error,
    JobEvent,
    JobPayload,
    Stop,
    SubmitResult,
    SubmittedMany,
)
from scheduler.protocol_types import SchedulerReport

# --- cancel ----------------------------------------------------------------------------


def test_cancel_a_queued_job() -> None:
    core = new_core()
    submit(core)
    decisions = core.cancel("j0", WALL, ref=1)
    assert reply(decisions) == CancelReply("j0", "cancelled", "cancelled", 1)
    assert events(decisions) == ["cancelled"]
    assert core.job("j0") is None and core.backlog() == []


def test_cancel_a_running_job_stops_it_and_its_confirmation_ends_it() -> None:
    core = new_core()
    add(core, "a")
    submit(core)
    report(core, "a", "j0", "started")
    decisions = core.cancel("j0", WALL)
    assert reply(decisions) == CancelReply("j0", "running", "stopping")
    assert stops(decisions) == [("a", Stop("j0", 1, "cancelled", kind="cancel"))]
    assert info(core, "j0").cancelling
    assert events(report(core, "a", "j0", "cancelled")) == ["cancelled"]
    assert core.job("j0") is None


@pytest.mark.parametrize(
    ("outcome", "state"),
    [("succeeded", "succeeded"), ("failed", "failed"), ("evicted", "cancelled")],
)
def test_what_a_cancelled_job_does_before_the_stop_arrives(
    outcome: SchedulerReport, state: str
) -> None:
    core = new_core()
    add(core, "a")
    submit(core, job(max_retries=5))
    core.cancel("j0", WALL)
    (final,) = emitted(report(core, "a", "j0", outcome))
    assert final.event.state == state  # its real outcome stands; no retry, no requeue


def test_a_cancelled_job_whose_holder_is_lost_ends_cancelled() -> None:
    core = new_core()
    add(core, "a")
    add(core, "b")
    submit(core)
    core.cancel("j0", WALL)
    core.detach("a", clean=False, now=0.0, wall=WALL)
    decisions = core.tick(LEASE, WALL)
    assert events(decisions) == ["cancelled"] and assigns(decisions) == []


def test_cancel_final_unknown_and_v1_held_jobs_changes_nothing() -> None:
    core = new_core()
    stored = Job("old", job(), 0, WALL, state="succeeded")
    assert reply(core.cancel("old", WALL, stored=stored)) == CancelReply(
        "old", "succeeded", "job old is already succeeded; nothing was done"
    )
    assert reply(core.cancel("nope", WALL, ref="r")) == Error("id: no job nope", "id", "r")
    add(core, "v1", reports=False)
    submit(core)
    answer = reply(core.cancel("j0", WALL))
    assert answer.state == "assigned" and "v1 scheduler v1" in answer.message
    assert not info(core, "j0").cancelling


@pytest.mark.parametrize("reports", [True, False])
def test_a_withdrawn_job_ends_cancelled_and_nobody_is_told_to_stop_it(reports: bool) -> None:
    """Its submit was refused before the assignment left the bus (v1 holders included)."""
    core = new_core()
    add(core, "a", reports=reports)
    submit(core)
    decisions = core.withdraw("j0", 0.0, WALL, "journal full; submit refused")
    assert stops(decisions) == [] and assigns(decisions) == []
    (cancelled,) = emitted(decisions)
    assert (cancelled.event.event, cancelled.event.error) == (
        "cancelled",
        "journal full; submit refused",
    )
    assert core.job("j0") is None and booked(core, "a") == (0, 0, 0, 0)
    core.check_invariants()


def test_the_slot_a_withdrawn_job_took_steals_waiting_work() -> None:
    core = new_core()
    add(core, "a", size=1)
    add(core, "b", size=1)
    submit(core)
    submit(core)
    submit(core, job(priority=3))
    assert [info(core, j).holder for j in ("j0", "j1", "j2")] == ["a", "b", "a"]
    decisions = core.withdraw("j1", 0.0, WALL, "refused")
    assert stops(decisions) == [("a", Stop("j2", 1, "stolen", kind="steal"))]


def test_withdrawing_a_job_no_longer_tracked_does_nothing() -> None:
    core = new_core()
    add(core, "a")
    submit(core)
    report(core, "a", "j0", "succeeded")
    assert core.withdraw("j0", 0.0, WALL, "refused") == []
    assert core.withdraw("nope", 0.0, WALL, "refused") == []


# --- client-chosen ids -----------------------------------------------------------------


def test_conflicts_raise_ignore_and_replace_a_queued_job() -> None:
    core = new_core()
    first = job(priority=5, job_id="nightly")
    assert reply(submit(core, first)) == Accepted("nightly", warning=UNSERVED)
    error = reply(submit(core, replace(first, runtime=2.0), ref=3))
    assert error == Error(
        "payload.job_id: job nightly already exists (state queued)", "payload.job_id", 3
    )
    ignored = replace(first, on_conflict="ignore", priority=0)
    assert reply(submit(core, ignored)) == Accepted("nightly", existing=True)
    replacement = replace(first, on_conflict="replace", priority=1)
    decisions = submit(core, replacement)
    assert reply(decisions) == Accepted("nightly", replaced=True, warning=UNSERVED)
    assert events(decisions) == ["accepted"]
    assert (len(core), core.backlog(), core.accepted) == (1, ["nightly"], 2)
    (send,) = sends(add(core, "a"))
    assert send.assignment.priority == 1  # the replacement runs, once


def test_replacing_an_assigned_job_stops_its_attempt_first() -> None:
    core = new_core()
    add(core, "a")
    submit(core, job(job_id="n"))
    decisions = submit(core, job(job_id="n", runtime=9.0, on_conflict="replace"))
    assert stops(decisions) == [("a", Stop("n", 1, "replaced"))]
    assert [(d.assignment.attempt, d.assignment.runtime) for d in sends(decisions)] == [(2, 9.0)]
    (ignored,) = report(core, "a", "n", "started", attempt=1)
    assert isinstance(ignored, Ignored)


def test_running_final_and_v1_held_jobs_cannot_be_replaced() -> None:
    core = new_core()
    add(core, "a")
    submit(core, job(job_id="run"))
    report(core, "a", "run", "started")
    again = job(runtime=2.0, job_id="run", on_conflict="replace")
    assert "is running" in reply(submit(core, again)).message
    stored = {"done": Job("done", job(), 0, WALL, state="failed")}
    answer = reply(submit(core, job(job_id="done", on_conflict="replace"), stored=stored))
    assert "is final (state failed)" in answer.message
    assert reply(submit(core, job(job_id="done", on_conflict="ignore"), stored=stored)) == (
        Accepted("done", existing=True)
    )
    core.detach("a", clean=True, now=0.0, wall=WALL)
    add(core, "v1", reports=False)
    submit(core, job(job_id="old"))
    again = job(runtime=2.0, job_id="old", on_conflict="replace")
    assert "is running" in reply(submit(core, again)).message


# --- bulk ------------------------------------------------------------------------------


def test_a_batch_gets_one_result_per_job_in_order() -> None:
    core = new_core()
    add(core, "a", size=10)
    batch: list[JobPayload | ProtocolError] = [
        job(priority=1),
        ProtocolError("priority: Expected `int` <= 10", "priority"),
        job(job_id="x"),
        job(job_id="x", runtime=2.0),
        ProtocolError("not valid JSON: truncated"),
        job(priority=2),
    ]
    decisions = core.submit_many(batch, 0.0, WALL, ref="b")
    assert reply(decisions) == SubmittedMany(
        [
            SubmitResult(id="j0"),
            SubmitResult(error="jobs.1.priority: Expected `int` <= 10", field="jobs.1.priority"),
            SubmitResult(id="x"),
            SubmitResult(
                error="jobs.3.job_id: job x already exists (state assigned)", field="jobs.3.job_id"
            ),
            SubmitResult(error="jobs.4: not valid JSON: truncated", field="jobs.4"),
            SubmitResult(id="j1"),
        ],
        "b",
    )
    assert assigns(decisions) == [("a", "j0"), ("a", "x"), ("a", "j1")]
    saved, _ = core.take_changes()
    assert sorted(j.id for j in saved) == ["j0", "j1", "x"]


# --- validation ------------------------------------------------------------------------


def test_a_sleep_job_needs_a_runtime_other_tasks_do_not() -> None:
    core = new_core()
    add(core, "a", tasks=["sleep", "render"])
    decisions = submit(core, JobPayload(priority=1), ref=3)
    assert decisions == [
        SendReply(
            Error(
                "payload.runtime: required, > 0 for the sleep task",
                field="payload.runtime",
                ref=3,
            )
        )
    ]
    assert len(core) == 0
    assert assigns(submit(core, JobPayload(priority=1, task="render"))) == [("a", "j0")]
    batch: list[JobPayload | ProtocolError] = [job(), JobPayload(priority=2)]
    results = reply(core.submit_many(batch, 0.0, WALL)).results
    assert results[0] == SubmitResult(id="j1")
    assert results[1].field == "jobs.1.runtime" and "> 0 for the sleep task" in results[1].error


def test_new_rules_refuse_bad_numbers() -> None:
    with pytest.raises(ValueError, match="steal must be one of urgent, tail, off"):
        DispatchConfig(steal="random")
    with pytest.raises(ValueError, match="age_every"):
        DispatchConfig(age_every=0.0)


# --- owners ----------------------------------------------------------------------------


def test_a_producer_cancels_and_watches_only_its_own_jobs() -> None:
    core = new_core()
    add(core, "a")
    submit(core, job(), owner="alice")
    stored = Job("old", job(), 0, WALL, state="failed", owner="alice")
    for job_id, found in (("j0", None), ("old", stored)):
        refused = reply(core.cancel(job_id, WALL, stored=found, ref=1, by="mallory"))
        assert refused == Error(
            f"id: job {job_id} belongs to another submitter; a producer may cancel only its"
            " own jobs",
            "id",
            1,
        )
        assert core.watch(job_id, WALL, stored=found, by="mallory") == Error(
            f"ids: job {job_id} belongs to another submitter; a producer may watch only its"
            " own jobs",
            "ids",
        )
        for by in ("alice", None):  # its owner, or a role that may act on any job
            watched = core.watch(job_id, WALL, stored=found, by=by)
            assert isinstance(watched, JobEvent) and watched.id == job_id
    assert info(core, "j0").state == "assigned"
    assert core.watch("nope", WALL, by="alice") is None
    assert reply(core.cancel("j0", WALL, by="alice")) == CancelReply("j0", "running", "stopping")


def test_a_resent_submit_returns_its_job_and_another_owner_conflicts() -> None:
    core = new_core()
    first = job(job_id="cli-3")
    assert reply(submit(core, first, owner="alice")) == Accepted("cli-3", warning=UNSERVED)
    assert reply(submit(core, first, owner="alice")) == Accepted("cli-3", existing=True)
    batch = core.submit_many([first], 0.0, WALL, owner="alice")
    assert reply(batch).results == [SubmitResult(id="cli-3", existing=True)]
    taken = reply(submit(core, replace(first, on_conflict="replace"), owner="mallory"))
    assert taken == Error(
        "payload.job_id: job id cli-3 is taken by another submitter; choose another id",
        "payload.job_id",
    )
    assert (len(core), core.accepted) == (1, 1)
