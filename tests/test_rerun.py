"""The ``retry`` command in the dispatch core, on plain numbers: a final job that did not
succeed is tracked again, queued for its next attempt and dispatched; every other case
is refused with the reason, and the rest of the request still goes through."""

from __future__ import annotations

from typing import Any

import pytest
from dispatch_helpers import (
    WALL,
    add,
    assigns,
    emitted,
    events,
    job,
    new_core,
    reply,
    report,
    sends,
)

from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.policy.dispatch.rerun import RETRYABLE, retry_refusal
from scheduler.policy.job import Job
from scheduler.protocol import Retried
from scheduler.protocol_types import FINAL_EVENTS, JobState


def ended(core: Dispatcher) -> dict[str, Job]:
    """The journal's records of the jobs that ended since the last call (by id)."""
    changed, _ = core.take_changes()
    return {j.id: j for j in changed if j.final}


def failed_job(core: Dispatcher, job_id: str = "f", **payload: Any) -> dict[str, Job]:
    """Submit ``job_id``, run it at ``a`` and fail it; return the journal's records."""
    core.submit(job(job_id=job_id, **payload), 0.0, WALL)
    report(core, "a", job_id, "started")
    report(core, "a", job_id, "failed", error="ValueError: boom", traceback="Trace...")
    return ended(core)


def test_a_failed_job_runs_again_as_its_next_attempt_and_can_succeed() -> None:
    core = new_core()
    add(core, "a")
    stored = failed_job(core)
    assert stored["f"].state == "failed"
    out = core.retry(["f"], 1.0, WALL + 1, stored=stored, ref=7)
    answer = reply(out)
    assert isinstance(answer, Retried) and answer.errors == {} and answer.ref == 7
    assert [(e.event, e.id, e.state, e.attempt) for e in answer.jobs] == [
        ("retried", "f", "queued", 1)
    ]
    assert events(out) == ["retried", "assigned"]
    assert assigns(out) == [("a", "f")]
    assert emitted(out)[1].event.attempt == 2
    changed, _ = core.take_changes()
    assert [(j.id, j.state, j.finished_at, j.errors) for j in changed] == [
        ("f", "assigned", None, ("ValueError: boom",))
    ]
    core.check_invariants()
    report(core, "a", "f", "started", attempt=2)
    assert events(report(core, "a", "f", "succeeded", attempt=2, result=3)) == ["succeeded"]


def test_a_retried_job_starts_its_deliveries_over() -> None:
    core = new_core(max_deliveries=1)
    add(core, "a")
    core.submit(job(job_id="f"), 0.0, WALL)
    assert "dead" in events(core.detach("a", clean=True, now=1.0, wall=WALL))
    stored = ended(core)
    assert stored["f"].state == "dead"
    add(core, "b", now=2.0)
    out = core.retry(["f"], 2.0, WALL + 2, stored=stored)
    assert events(out) == ["retried", "assigned"]
    core.check_invariants()


def test_refusals_name_the_reason_and_the_rest_is_retried() -> None:
    core = new_core()
    add(core, "a", size=4)
    stored = failed_job(core)
    core.submit(job(job_id="ok"), 0.0, WALL)
    report(core, "a", "ok", "started")
    report(core, "a", "ok", "succeeded")
    stored |= ended(core)
    core.submit(job(job_id="live"), 0.0, WALL)
    out = core.retry(["ok", "live", "nope", "f", "f"], 1.0, WALL, stored=stored)
    answer = reply(out)
    assert [e.id for e in answer.jobs] == ["f"]
    assert set(answer.errors) == {"ok", "live", "nope"}
    assert "succeeded" in answer.errors["ok"]
    assert "not final" in answer.errors["live"]
    assert "no job nope" in answer.errors["nope"]
    core.check_invariants()


def test_a_producer_retries_only_its_own_jobs() -> None:
    core = new_core()
    add(core, "a")
    core.submit(job(job_id="f"), 0.0, WALL, owner="alice")
    report(core, "a", "f", "started")
    report(core, "a", "f", "failed")
    stored = ended(core)
    refused = reply(core.retry(["f"], 1.0, WALL, stored=stored, by="bob"))
    assert "another submitter" in refused.errors["f"]
    assert [e.id for e in reply(core.retry(["f"], 1.0, WALL, stored=stored, by="alice")).jobs] == [
        "f"
    ]


def test_an_expired_delayed_job_runs_now_and_cannot_expire_again() -> None:
    core = new_core()
    core.submit(job(job_id="d", delay=1.0, misfire_grace=0.5), 0.0, WALL)
    core.tick(1.0, WALL + 1)  # due, but no scheduler serves it
    core.tick(1.6, WALL + 1.6)
    stored = ended(core)
    assert stored["d"].state == "expired"
    out = core.retry(["d"], 2.0, WALL + 2, stored=stored)
    assert events(out) == ["retried"]
    changed, _ = core.take_changes()
    (rerun,) = (j for j in changed if j.id == "d")
    assert rerun.payload.run_at is None and rerun.payload.delay is None
    assert core.next_deadline() is None
    add(core, "a", now=3.0)
    core.check_invariants()


def test_a_skipped_job_runs_with_the_results_of_the_dependencies_that_succeeded() -> None:
    core = new_core()
    add(core, "a", size=4)
    core.submit(job(job_id="good"), 0.0, WALL)
    core.submit(job(job_id="bad"), 0.0, WALL)
    core.submit(job(job_id="after", depends_on=["good", "bad"], pass_results=True), 0.0, WALL)
    report(core, "a", "good", "started")
    report(core, "a", "good", "succeeded", result=41)
    report(core, "a", "bad", "started")
    report(core, "a", "bad", "failed")
    stored = ended(core)
    assert stored["after"].state == "skipped"
    out = core.retry(["after"], 1.0, WALL, stored=stored)
    assert [d.assignment.results for d in sends(out)] == [{"good": 41}]
    core.check_invariants()


def test_broadcast_jobs_and_their_runs_are_refused() -> None:
    core = new_core()
    add(core, "a")
    core.submit(job(job_id="b", broadcast=True), 0.0, WALL)
    report(core, "a", "b/a", "started")
    report(core, "a", "b/a", "failed")
    stored = ended(core)
    assert {"b", "b/a"} <= stored.keys()
    answer = reply(core.retry(["b", "b/a"], 1.0, WALL, stored=stored))
    assert answer.jobs == [] and all("broadcast" in why for why in answer.errors.values())


@pytest.mark.parametrize("state", sorted(FINAL_EVENTS))
def test_every_final_state_but_succeeded_may_be_retried(state: JobState) -> None:
    record = Job("x", job(), 0, WALL, state=state)
    refusal = retry_refusal("x", record, None)
    assert (refusal is None) == (state in RETRYABLE) == (state != "succeeded")


def test_a_retried_job_leaves_its_last_attempts_output_start_and_exit_behind() -> None:
    core = new_core()
    add(core, "a")
    core.submit(job(job_id="f"), 0.0, WALL)
    report(core, "a", "f", "started")
    report(core, "a", "f", "failed", error="boom", output="attempt 1 said this\n", exit_code=1)
    stored = ended(core)
    assert (stored["f"].output, stored["f"].exit_code) == ("attempt 1 said this\n", 1)
    assert stored["f"].started_at is not None
    core.retry(["f"], 1.0, WALL + 1, stored=stored)
    changed, _ = core.take_changes()
    assert [(j.id, j.output, j.progress, j.started_at, j.exit_code) for j in changed] == [
        ("f", None, None, None, None)
    ]
