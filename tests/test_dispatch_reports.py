"""The dispatch core applies schedulers' reports: fencing, evictions and deliveries,
results and tracebacks, retries."""

from __future__ import annotations

import random

import pytest
from dispatch_helpers import (
    LEASE,
    WALL,
    add,
    emitted,
    events,
    info,
    job,
    new_core,
    reply,
    report,
    sends,
    submit,
    submit_id,
)

from scheduler.policy.dispatch.config import DispatchConfig
from scheduler.policy.dispatch.decisions import (
    EmitEvent,
    Ignored,
)
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.policy.events import status_event
from scheduler.policy.retry import RetryBackoff
from scheduler.protocol import Accepted, CancelReply, Report
from scheduler.protocol_types import SchedulerReport

# --- reports and fencing ---------------------------------------------------------------


def test_reports_move_the_state_and_a_final_report_forgets_the_job() -> None:
    core = new_core()
    add(core, "a")
    submit(core, job(priority=4, runtime=2.0))
    (started,) = report(core, "a", "j0", "started")
    assert isinstance(started, EmitEvent)
    assert (started.event.event, started.event.state) == ("started", "running")
    done = core.report(
        "a",
        Report("succeeded", "j0", 1, exit_code=0, wall_s=2.1, cpu_s=0.1, max_rss_kb=9),
        0.0,
        WALL + 3,
    )
    (final,) = done
    assert isinstance(final, EmitEvent)
    event = final.event
    assert (event.event, event.state, event.scheduler, event.errors) == (
        "succeeded",
        "succeeded",
        "a",
        None,
    )
    assert (event.priority, event.runtime, event.task, event.attempt) == (4, 2.0, "sleep", 1)
    assert (event.exit_code, event.wall_s, event.cpu_s, event.max_rss_kb) == (0, 2.1, 0.1, 9)
    assert core.job("j0") is None and len(core) == 0
    assert core.load("a", 0.0) == 0.0
    assert (core.accepted, core.finished) == (1, 1)
    (saved,), deleted = core.take_changes()
    assert (saved.state, saved.finished_at, saved.holder, deleted) == (
        "succeeded",
        WALL + 3,
        "a",
        [],
    )


@pytest.mark.parametrize("event", ["failed", "timed_out"])
def test_failures_without_retries_are_final(event: SchedulerReport) -> None:
    core = new_core()
    add(core, "a")
    submit(core)
    (final,) = emitted(report(core, "a", "j0", event, exit_code=3))
    assert (final.event.event, final.event.state) == (event, event)
    expected = "timed out" if event == "timed_out" else "failed with exit code 3"
    assert final.event.errors == [expected]
    assert core.job("j0") is None


def test_stale_foreign_and_unknown_reports_are_ignored() -> None:
    core = new_core()
    add(core, "a")
    submit(core)
    core.detach("a", clean=True, now=1.0, wall=WALL)
    add(core, "b")  # now holds attempt 2
    stale = report(core, "b", "j0", "succeeded", attempt=1)
    foreign = report(core, "a", "j0", "succeeded", attempt=2)
    unknown = report(core, "b", "nope", "started")
    for decisions, why in [
        (stale, "stale attempt 1 (current 2)"),
        (foreign, "held by b"),
        (unknown, "unknown"),
    ]:
        (ignored,) = decisions
        assert isinstance(ignored, Ignored) and why in ignored.reason
    assert (info(core, "j0").state, info(core, "j0").holder) == ("assigned", "b")
    assert events(report(core, "b", "j0", "succeeded", attempt=2)) == ["succeeded"]


def test_a_report_about_a_queued_job_is_ignored() -> None:
    core = new_core()
    submit(core)
    (ignored,) = report(core, "a", "j0", "started")
    assert isinstance(ignored, Ignored) and "nobody" in ignored.reason


def test_heartbeats_are_recorded_for_known_schedulers_only() -> None:
    core = new_core()
    add(core, "a", size=3, tasks=["sleep", "shell"])
    core.heartbeat("a", 2, 7, 12.5)
    core.heartbeat("ghost", 1, 1, 12.5)
    snapshot = core.scheduler("a")
    assert snapshot is not None
    assert (snapshot.running, snapshot.queued, snapshot.last_heartbeat) == (2, 7, 12.5)
    assert (snapshot.size, snapshot.tasks, snapshot.reports, snapshot.connected) == (
        3,
        frozenset({"sleep", "shell"}),
        True,
        True,
    )
    assert (snapshot.outstanding, snapshot.lease_deadline) == (0, 12.5 + LEASE)
    assert core.scheduler("ghost") is None


def test_misuse_is_refused() -> None:
    core = new_core()
    with pytest.raises(ValueError, match="size"):
        add(core, "b", size=0)
    assert core.detach("ghost", clean=True, now=0.0, wall=WALL) == []
    with pytest.raises(ValueError, match="lease"):
        DispatchConfig(lease=0)
    with pytest.raises(ValueError, match="max_evictions"):
        DispatchConfig(max_evictions=-1)
    with pytest.raises(ValueError, match="max_deliveries"):
        DispatchConfig(max_deliveries=0)


def test_generated_ids_never_collide_with_tracked_jobs() -> None:
    ids = iter(["x", "x", "y"])
    core = Dispatcher(new_id=lambda: next(ids))
    assert submit_id(core) == "x"
    assert submit_id(core) == "y"
    default = Dispatcher(rng=random.Random(3))
    assert len(submit_id(default)) == 32


# --- evictions, deliveries -------------------------------------------------------------


def test_an_eviction_requeues_the_job_for_any_scheduler() -> None:
    core = new_core()
    add(core, "a", size=1)
    submit(core)
    add(core, "b", size=1)
    decisions = report(core, "a", "j0", "evicted", evictions=1)  # its count, this one included
    assert events(decisions) == ["evicted", "assigned"]
    evicted = emitted(decisions)[0].event
    assert (evicted.state, evicted.scheduler, evicted.evictions) == ("queued", "a", 1)
    (send,) = sends(decisions)
    assert (send.scheduler, send.assignment.attempt, send.assignment.evictions) == ("b", 2, 1)
    assert (info(core, "j0").evictions, info(core, "j0").retries) == (1, 0)  # not a failure


def test_after_max_evictions_a_job_is_no_longer_evictable() -> None:
    core = new_core(max_evictions=2)
    add(core, "a", size=1)
    submit(core)
    evictable = []
    for attempt in (1, 2, 3):
        decisions = report(core, "a", "j0", "evicted", attempt=attempt)
        evictable.append(sends(decisions)[0].assignment.evictable)
    assert evictable == [True, False, False]
    assert info(core, "j0").evictions == 3
    report(core, "a", "j0", "started", attempt=4, evictions=5)  # a count is never undercut
    assert info(core, "j0").evictions == 5


def test_a_job_delivered_too_often_is_dead() -> None:
    core = new_core(max_deliveries=3)
    submit(core, job(max_retries=1))  # the limit is 3 + 1 deliveries
    for step in range(4):
        add(core, f"s{step}")
        decisions = core.detach(f"s{step}", clean=True, now=float(step), wall=WALL)
    assert events(decisions) == ["requeued", "dead"]
    dead = emitted(decisions)[-1].event
    assert dead.state == "dead" and dead.error is not None
    assert "delivered 4 times (limit 4)" in dead.error
    assert core.job("j0") is None
    changed, _ = core.take_changes()
    (record,) = [stored for stored in changed if stored.id == "j0"]
    assert record.errors[-1] == dead.error  # its status (jobs show) says why


# --- results and tracebacks ------------------------------------------------------------


def test_a_succeeded_report_s_result_is_in_the_event_and_the_stored_job() -> None:
    core = new_core()
    add(core, "a")
    submit(core)
    (started,) = emitted(report(core, "a", "j0", "started"))
    assert (started.event.result, started.event.traceback) == (None, None)
    result = {"pages": [1, 2], "ok": True}
    (done,) = emitted(report(core, "a", "j0", "succeeded", exit_code=0, result=result))
    assert (done.event.event, done.event.result, done.event.traceback) == (
        "succeeded",
        result,
        None,
    )
    (saved,), _ = core.take_changes()
    assert (saved.state, saved.result, saved.traceback) == ("succeeded", result, None)
    status = status_event(saved, WALL)
    assert (status.event, status.result) == ("succeeded", result)


def test_a_succeeded_report_without_a_result_has_none() -> None:
    core = new_core()
    add(core, "a")
    submit(core)
    (done,) = emitted(report(core, "a", "j0", "succeeded", exit_code=0))
    assert done.event.result is None
    (saved,), _ = core.take_changes()
    assert saved.result is None


def test_a_result_in_a_failed_report_is_not_kept() -> None:
    core = new_core()
    add(core, "a")
    submit(core)
    (failed,) = emitted(report(core, "a", "j0", "failed", error="E", result=[1]))
    assert failed.event.result is None


def test_the_traceback_is_that_of_the_latest_failed_attempt() -> None:
    core = new_core()
    add(core, "a", size=1)
    submit(core, job(max_retries=3, retry_backoff=0.0))

    first = report(core, "a", "j0", "failed", attempt=1, error="ValueError: 1", traceback="tb 1")
    retrying, assigned = emitted(first)
    assert (retrying.event.event, retrying.event.traceback) == ("retrying", "tb 1")
    assert retrying.event.errors == ["ValueError: 1"]
    assert (assigned.event.event, assigned.event.traceback) == ("assigned", None)
    (started,) = emitted(report(core, "a", "j0", "started", attempt=2))
    assert (started.event.event, started.event.traceback) == ("started", None)
    status = core.status("j0", WALL)
    assert status is not None and (status.event, status.traceback) == ("started", None)

    second = report(core, "a", "j0", "failed", attempt=2, error="KeyError: 2", traceback="tb 2")
    assert [(e.event.event, e.event.traceback) for e in emitted(second)] == [
        ("retrying", "tb 2"),
        ("assigned", None),
    ]

    # An attempt that failed without an exception has no traceback: none is left over.
    third = report(core, "a", "j0", "timed_out", attempt=3)
    assert [(e.event.event, e.event.traceback) for e in emitted(third)] == [
        ("retrying", None),
        ("assigned", None),
    ]

    last = report(core, "a", "j0", "failed", attempt=4, error="OSError: 4", traceback="tb 4")
    (dead,) = emitted(last)
    assert (dead.event.event, dead.event.state, dead.event.traceback) == ("dead", "dead", "tb 4")
    assert dead.event.errors == ["ValueError: 1", "KeyError: 2", "timed out", "OSError: 4"]
    (saved,), _ = core.take_changes()
    assert (saved.state, saved.traceback, saved.result) == ("dead", "tb 4", None)


@pytest.mark.parametrize("event", ["failed", "timed_out"])
def test_a_final_failure_carries_its_traceback(event: SchedulerReport) -> None:
    core = new_core()
    add(core, "a")
    submit(core)
    tb = "Traceback ...\nValueError: x\n" if event == "failed" else None
    (final,) = emitted(report(core, "a", "j0", event, error="ValueError: x", traceback=tb))
    assert (final.event.event, final.event.traceback, final.event.result) == (event, tb, None)
    (saved,), _ = core.take_changes()
    assert status_event(saved, WALL).traceback == tb


# --- retries ---------------------------------------------------------------------------


def test_retries_back_off_exponentially_with_jitter_then_the_job_is_dead() -> None:
    core = new_core(lease=1000.0)
    expected_rng = random.Random(1)
    add(core, "a")
    submit(core, job(max_retries=2, retry_backoff=10.0))
    now = 0.0
    for retry in (1, 2):
        expected = RetryBackoff().delay(10.0, retry, expected_rng)
        decisions = report(core, "a", "j0", "failed", attempt=retry, now=now, error=f"boom {retry}")
        (retrying,) = emitted(decisions)
        event = retrying.event
        assert (event.event, event.state, event.retry_in_s) == ("retrying", "queued", expected)
        assert event.errors == [f"boom {n}" for n in range(1, retry + 1)]
        assert 10.0 * 2 ** (retry - 1) * 0.5 <= expected <= 10.0 * 2 ** (retry - 1) * 1.5
        assert info(core, "j0").not_before == WALL + expected
        assert core.next_deadline() == now + expected
        assert core.tick(now + expected - 0.01, WALL) == []  # held back until due
        decisions = core.tick(now + expected, WALL)
        assert [(d.assignment.attempt) for d in sends(decisions)] == [retry + 1]
        now += expected
    decisions = report(core, "a", "j0", "timed_out", attempt=3, now=now)
    (dead,) = emitted(decisions)
    assert (dead.event.event, dead.event.state) == ("dead", "dead")
    assert dead.event.errors == ["boom 1", "boom 2", "timed out"]
    assert core.job("j0") is None


def test_a_retry_with_no_backoff_goes_out_at_once() -> None:
    core = new_core()
    add(core, "a")
    submit(core, job(max_retries=1, retry_backoff=0.0))
    decisions = report(core, "a", "j0", "failed", exit_code=1)
    assert events(decisions) == ["retrying", "assigned"]


def test_a_job_waiting_for_its_retry_can_be_cancelled_or_replaced() -> None:
    core = new_core(lease=1000.0)
    add(core, "a")
    submit(core, job(max_retries=3, retry_backoff=5.0))
    submit(core, job(max_retries=3, retry_backoff=5.0, job_id="named"))
    report(core, "a", "j0", "failed")
    report(core, "a", "named", "failed")
    assert info(core, "j0").state == "queued" and core.backlog() == []
    assert reply(core.cancel("j0", WALL)) == CancelReply("j0", "cancelled", "cancelled")
    replaced = reply(submit(core, job(runtime=2.0, job_id="named", on_conflict="replace")))
    assert replaced == Accepted("named", replaced=True)
    assert core.tick(100.0, WALL) == []  # nothing is left to retry
