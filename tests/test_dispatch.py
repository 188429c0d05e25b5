"""The bus's dispatch core with plain numbers for time: no sockets, no event loop."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from scheduler.policy.dispatch.config import DispatchConfig
from scheduler.policy.dispatch.decisions import (
    Decision,
    EmitEvent,
    Ignored,
    LeaseExpired,
    Requeued,
    SendAssign,
    SendReply,
    SendStop,
)
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.policy.dispatch.producers import unserved_warning
from scheduler.policy.dispatch.registry import MAX_CACHED_TASKS
from scheduler.policy.events import status_event
from scheduler.policy.job import Job
from scheduler.policy.retry import RetryBackoff
from scheduler.protocol import (
    DEFAULT_PRIORITY,
    Accepted,
    CancelReply,
    Error,
    Held,
    JobEvent,
    JobPayload,
    ProtocolError,
    Report,
    SchedulerReport,
    Stop,
    SubmitResult,
    SubmittedMany,
)

WALL = 1_700_000_000.0
LEASE = 5.0
UNSERVED = unserved_warning("sleep")


def new_core(**config: Any) -> Dispatcher:
    """A core with a seeded generator and ids j0, j1, ..."""
    counter = itertools.count()
    rules = DispatchConfig(**({"lease": LEASE} | config))
    return Dispatcher(rules, random.Random(1), new_id=lambda: f"j{next(counter)}")


def job(priority: int = 5, runtime: float = 1.0, task: str = "sleep", **more: Any) -> JobPayload:
    return JobPayload(priority=priority, runtime=runtime, task=task, **more)


def assigns(decisions: Iterable[Decision]) -> list[tuple[str, str]]:
    """(scheduler, job id) of every assignment, in order."""
    return [(d.scheduler, d.assignment.id) for d in decisions if isinstance(d, SendAssign)]


def sends(decisions: Iterable[Decision]) -> list[SendAssign]:
    return [d for d in decisions if isinstance(d, SendAssign)]


def stops(decisions: Iterable[Decision]) -> list[tuple[str, Stop]]:
    return [(d.scheduler, d.stop) for d in decisions if isinstance(d, SendStop)]


def events(decisions: Iterable[Decision]) -> list[str]:
    return [d.event.event for d in decisions if isinstance(d, EmitEvent)]


def emitted(decisions: Iterable[Decision]) -> list[EmitEvent]:
    return [d for d in decisions if isinstance(d, EmitEvent)]


def reply(decisions: Sequence[Decision]) -> Any:
    first = decisions[0]
    assert isinstance(first, SendReply)
    return first.message


def add(
    core: Dispatcher,
    name: str,
    size: int | None = 2,
    tasks: list[str] | None = None,
    reports: bool = True,
    now: float = 0.0,
    held: Sequence[Held] = (),
) -> list[Decision]:
    return core.attach(name, size=size, tasks=tasks, reports=reports, held=held, now=now, wall=WALL)


def submit(
    core: Dispatcher, payload: JobPayload | None = None, now: float = 0.0, **kwargs: Any
) -> list[Decision]:
    return core.submit(payload or job(), now, WALL, **kwargs)


def submit_id(core: Dispatcher, payload: JobPayload | None = None, now: float = 0.0) -> str:
    accepted = reply(submit(core, payload, now))
    assert isinstance(accepted, Accepted)
    return accepted.id


def report(
    core: Dispatcher,
    scheduler: str,
    job_id: str,
    event: SchedulerReport,
    attempt: int = 1,
    now: float = 0.0,
    **more: Any,
) -> list[Decision]:
    return core.report(
        scheduler, Report(event=event, id=job_id, attempt=attempt, **more), now, WALL
    )


def info(core: Dispatcher, job_id: str) -> Any:
    snapshot = core.job(job_id)
    assert snapshot is not None
    return snapshot


# --- dispatch --------------------------------------------------------------------------


def test_submit_replies_accepted_then_assigns_and_emits_assigned() -> None:
    core = new_core()
    add(core, "a")
    decisions = submit(core, job(priority=3, runtime=0.5), ref=9)
    assert [type(d) for d in decisions] == [SendReply, EmitEvent, SendAssign, EmitEvent]
    assert reply(decisions) == Accepted("j0", 9)
    first, send, second = decisions[1:]
    assert isinstance(first, EmitEvent) and isinstance(second, EmitEvent)
    assert isinstance(send, SendAssign)
    assert first.event.event == "accepted" and first.event.state == "queued"
    assert first.event.time == WALL and first.event.attempt == 0
    assert send.scheduler == "a"
    assert (send.assignment.id, send.assignment.attempt) == ("j0", 1)
    assert (send.assignment.priority, send.assignment.runtime) == (3, 0.5)
    assert send.assignment.evictable
    assert send.payload == job(priority=3, runtime=0.5)
    assert second.event.event == "assigned" and second.event.state == "assigned"
    assert second.event.scheduler == "a"
    assert (info(core, "j0").attempt, info(core, "j0").deliveries) == (1, 1)


def test_the_least_loaded_scheduler_gets_the_job() -> None:
    core = new_core()
    add(core, "small", size=1)
    add(core, "big", size=4)
    got = [assigns(submit(core))[0][0] for _ in range(5)]
    # small 0/1 vs big 0/4 tie -> small (registered first); then big until 1/4 < 1/1 stops.
    assert got == ["small", "big", "big", "big", "big"]
    assert core.load("small", 0.0) == 1.0
    assert core.load("big", 0.0) == 1.0


def test_ties_go_round_robin() -> None:
    core = new_core()
    for name in ("a", "b", "c"):
        add(core, name, size=100)
    got = [assigns(submit(core))[0][0] for _ in range(6)]
    assert got == ["a", "b", "c", "a", "b", "c"]


def test_equal_ratios_tie_across_sizes() -> None:
    core = new_core()
    add(core, "three", size=3)
    add(core, "six", size=6)
    got = [assigns(submit(core))[0][0] for _ in range(9)]
    assert got.count("three") == 3 and got.count("six") == 6


def test_with_no_scheduler_jobs_wait_and_go_out_by_priority_then_arrival() -> None:
    core = new_core()
    for priority in (9, 5, 0, 5):
        assert events(submit(core, job(priority=priority))) == ["accepted"]
    assert core.backlog() == ["j2", "j1", "j3", "j0"]
    assert info(core, "j2").state == "queued"
    decisions = add(core, "a", size=1)
    assert assigns(decisions) == [("a", j) for j in ("j2", "j1", "j3", "j0")]
    assert core.backlog() == []


def test_jobs_go_only_to_schedulers_serving_their_task() -> None:
    core = new_core()
    add(core, "sleeper")  # tasks None: sleep only
    add(core, "shell", tasks=["shell"])
    assert assigns(submit(core, job(task="shell"))) == [("shell", "j0")]
    assert assigns(submit(core, job(task="sleep"))) == [("sleeper", "j1")]
    assert assigns(submit(core, job(task="render"))) == []
    assert core.backlog() == ["j2"]
    assert assigns(add(core, "renderer", tasks=["render", "sleep"])) == [("renderer", "j2")]


def test_many_task_names_nobody_serves_wait_and_go_out_when_served() -> None:
    core = new_core()
    add(core, "a")
    for i in range(MAX_CACHED_TASKS + 1):
        assert assigns(submit(core, job(task=f"t{i}"))) == []
    assert assigns(submit(core, job())) == [("a", f"j{MAX_CACHED_TASKS + 1}")]
    assert assigns(add(core, "b", tasks=["t7"])) == [("b", "j7")]


def test_v1_load_decays_once_the_runtime_has_elapsed_and_the_job_is_deleted() -> None:
    core = new_core()
    add(core, "v1", size=None, reports=False)
    core.heartbeat("v1", 0, 0, 1.0)
    info_v1 = core.scheduler("v1")
    assert info_v1 is not None and info_v1.lease_deadline is None  # v1 has no lease
    submit(core, job(runtime=2.0), now=0.0)
    submit(core, job(runtime=5.0), now=1.0)
    core.take_changes()
    assert core.next_deadline() == 2.0
    assert core.load("v1", 1.999) == pytest.approx(2 / 5)
    assert core.load("v1", 2.0) == pytest.approx(1 / 5)
    assert core.job("j0") is None  # forgotten: a v1 scheduler never says how it ended
    assert core.take_changes() == ([], ["j0"])
    assert core.tick(6.0, WALL) == []
    assert len(core) == 0 and core.take_changes() == ([], ["j1"])


def test_v1_decay_steers_the_choice() -> None:
    core = new_core()
    add(core, "v1", size=1, reports=False)
    add(core, "v2", size=1)
    assert assigns(submit(core, job(runtime=1.0), now=0.0)) == [("v1", "j0")]
    assert assigns(submit(core, now=0.5)) == [("v2", "j1")]
    assert assigns(submit(core, now=1.0)) == [("v1", "j2")]


def test_a_v1_scheduler_that_reports_anyway_is_not_double_counted() -> None:
    core = new_core()
    add(core, "v1", size=1, reports=False)
    submit(core, job(runtime=1.0), now=0.0)
    assert events(report(core, "v1", "j0", "succeeded")) == ["succeeded"]
    assert core.load("v1", 5.0) == 0.0
    assert (len(core), core.finished) == (0, 1)


def test_a_leaving_v1_scheduler_requeues_only_jobs_still_running() -> None:
    core = new_core()
    add(core, "v1", reports=False)
    submit(core, job(runtime=1.0))
    submit(core, job(runtime=10.0))
    decisions = core.detach("v1", clean=False, now=5.0, wall=WALL)
    assert [d.job_id for d in decisions if isinstance(d, Requeued)] == ["j1"]
    assert core.job("j0") is None and core.scheduler("v1") is None


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


# --- leases ----------------------------------------------------------------------------


def test_a_clean_close_releases_the_jobs_at_once() -> None:
    core = new_core()
    add(core, "a", size=10)
    submit(core, job(priority=7))
    submit(core, job(priority=2))
    add(core, "b", size=10)
    decisions = core.detach("a", clean=True, now=3.0, wall=WALL)
    requeued = [d for d in decisions if isinstance(d, Requeued)]
    assert [(d.job_id, d.scheduler, d.attempt) for d in requeued] == [
        ("j1", "a", 1),
        ("j0", "a", 1),
    ]
    assert events(decisions) == ["requeued", "requeued", "assigned", "assigned"]
    assert {d.assignment.attempt for d in sends(decisions)} == {2}
    assert assigns(decisions) == [("b", "j1"), ("b", "j0")]
    assert core.scheduler("a") is None


def test_a_broken_connection_keeps_its_jobs_until_the_lease_expires() -> None:
    core = new_core()
    add(core, "a", now=0.0)
    submit(core)
    core.heartbeat("a", 1, 0, 2.0)  # the lease now ends at 7
    add(core, "b", now=2.0)
    assert core.detach("a", clean=False, now=3.0, wall=WALL) == []
    snapshot = core.scheduler("a")
    assert snapshot is not None and not snapshot.connected and snapshot.outstanding == 1
    assert info(core, "j0").holder == "a"
    assert assigns(submit(core, now=3.0)) == [("b", "j1")]  # a disconnected one gets nothing
    assert core.next_deadline() == 2.0 + LEASE
    assert core.tick(6.9, WALL) == []
    core.heartbeat("b", 1, 0, 6.9)
    decisions = core.tick(7.0, WALL)
    assert decisions[0] == LeaseExpired("a", 1, connected=False)
    assert events(decisions) == ["requeued", "assigned"]
    assert [(d.assignment.id, d.assignment.attempt) for d in sends(decisions)] == [("j0", 2)]
    assert core.scheduler("a") is None


def test_a_silent_connected_scheduler_loses_its_jobs_and_its_connection() -> None:
    core = new_core()
    add(core, "a", now=0.0)
    submit(core)
    core.report("a", Report("started", "j0", 1), 4.0, WALL)  # a report renews the lease
    assert core.next_deadline() == 4.0 + LEASE
    decisions = core.tick(4.0 + LEASE, WALL)
    assert decisions[0] == LeaseExpired("a", 1, connected=True)
    assert info(core, "j0").state == "queued" and core.backlog() == ["j0"]
    assert core.next_deadline() is None


def test_an_idle_scheduler_that_disconnects_is_forgotten_at_once() -> None:
    core = new_core()
    add(core, "a")
    assert core.detach("a", clean=False, now=1.0, wall=WALL) == []
    assert core.scheduler("a") is None and core.next_deadline() is None


def test_reattaching_within_the_lease_keeps_what_it_still_holds() -> None:
    core = new_core()
    add(core, "a", size=5)
    for _ in range(4):
        submit(core)
    report(core, "a", "j0", "started")
    core.detach("a", clean=False, now=1.0, wall=WALL)
    core.cancel("j3", WALL)  # the Stop cannot reach it while it is away
    held = [Held("j0", 1), Held("j1", 1, done=True), Held("j3", 1), Held("j9", 1)]
    decisions = add(core, "a", size=5, now=2.0, held=held)
    # j2 was not listed: requeued at once, and (a being the only one) assigned again.
    assert stops(decisions) == [
        ("a", Stop("j9", 1, "the job is final or unknown")),
        ("a", Stop("j3", 1, "cancelled", kind="cancel")),
    ]
    assert [(d.job_id, d.reason) for d in decisions if isinstance(d, Requeued)] == [
        ("j2", "not held after reconnecting")
    ]
    assert [(d.assignment.id, d.assignment.attempt) for d in sends(decisions)] == [("j2", 2)]
    assert (info(core, "j0").state, info(core, "j0").holder) == ("running", "a")
    assert events(report(core, "a", "j1", "succeeded", now=2.0)) == ["succeeded"]  # its outbox
    assert events(report(core, "a", "j3", "cancelled", now=2.0)) == ["cancelled"]
    snapshot = core.scheduler("a")
    assert snapshot is not None and snapshot.connected and snapshot.lease_deadline == 2.0 + LEASE


def test_coming_back_after_the_lease_stops_every_held_attempt() -> None:
    core = new_core()
    add(core, "a")
    submit(core)
    submit(core)
    core.detach("a", clean=False, now=0.0, wall=WALL)
    add(core, "b", now=1.0)
    core.tick(LEASE, WALL)  # both to b as attempt 2
    report(core, "b", "j1", "succeeded", attempt=2)
    decisions = add(core, "a", now=9.0, held=[Held("j0", 1), Held("j1", 1, done=True)])
    assert stops(decisions) == [
        ("a", Stop("j0", 1, "the job was reassigned to b")),
        ("a", Stop("j1", 1, "the job is final or unknown")),
    ]
    (ignored,) = report(core, "a", "j0", "succeeded", attempt=1)  # its outbox: stale
    assert isinstance(ignored, Ignored)


def test_a_reattaching_scheduler_may_get_its_lost_job_back_as_a_new_attempt() -> None:
    core = new_core()
    add(core, "a")
    submit(core)
    decisions = add(core, "a", now=1.0, held=[])  # it lost the job (say, it restarted)
    assert [(d.assignment.id, d.assignment.attempt) for d in sends(decisions)] == [("j0", 2)]


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


# --- restart ---------------------------------------------------------------------------


def stored_job(job_id: str, seq: int, **fields: Any) -> Job:
    return Job(job_id, job(priority=seq), seq, WALL - 100, **fields)


def test_a_restarted_core_takes_back_the_journal_s_jobs() -> None:
    core = new_core()
    jobs = [
        stored_job("q", 0),
        stored_job("held", 1, state="running", holder="a", attempt=2, deliveries=2),
        stored_job("later", 2, attempt=1, not_before=WALL + 30),
        stored_job("odd", 3, state="assigned"),  # no holder: queued again
        stored_job("other", 4, state="assigned", holder="b", attempt=1),
        stored_job("also", 5, state="assigned", holder="a", attempt=1),
    ]
    core.restore(jobs, next_seq=10, now=100.0, wall=WALL)
    assert core.backlog() == ["q", "odd"]
    assert core.next_deadline() == 100.0 + LEASE
    assert info(core, "held").holder == "a"
    a = core.scheduler("a")
    assert a is not None and not a.connected and a.outstanding == 2
    decisions = add(core, "a", now=101.0, held=[Held("held", 2), Held("also", 1)])
    assert stops(decisions) == [] and assigns(decisions) == [("a", "q"), ("a", "odd")]
    assert events(report(core, "a", "held", "succeeded", attempt=2, now=101.0)) == ["succeeded"]
    decisions = core.tick(100.0 + LEASE, WALL)  # b never came back
    assert decisions[0] == LeaseExpired("b", 1, connected=False)
    assert [(d.assignment.id, d.assignment.attempt) for d in sends(decisions)] == [("other", 2)]
    assert core.next_deadline() == 101.0 + LEASE  # a's lease, then the held-back retry
    core.heartbeat("a", 0, 0, 129.0)
    assert core.next_deadline() == 100.0 + 30
    assert [d.assignment.id for d in sends(core.tick(130.0, WALL))] == ["later"]
    assert submit_id(core) == "j0"
    assert core.job("j0") is not None
    new = [j for j in core.take_changes()[0] if j.id == "j0"]
    assert new[0].seq == 10


def test_a_restart_promise_keeps_held_jobs_with_their_holder_until_its_deadline() -> None:
    core = new_core()
    jobs = [
        stored_job("held", 0, state="running", holder="a", attempt=1, deliveries=1),
        stored_job("waits", 1, state="assigned", holder="a", attempt=1, deliveries=1),
    ]
    core.restore(jobs, next_seq=2, now=100.0, wall=WALL, promised_until=WALL + 60)
    assert core.next_deadline() == 160.0  # not one lease from the restart
    assert core.tick(100.0 + LEASE, WALL + LEASE) == []
    assert info(core, "held").holder == "a"
    decisions = add(core, "a", now=130.0, held=[Held("held", 1), Held("waits", 1)])
    assert stops(decisions) == [] and assigns(decisions) == []
    assert events(report(core, "a", "held", "succeeded", now=131.0)) == ["succeeded"]


def test_a_past_restart_promise_gives_only_the_lease() -> None:
    core = new_core()
    jobs = [stored_job("held", 0, state="running", holder="a", attempt=1, deliveries=1)]
    core.restore(jobs, next_seq=1, now=100.0, wall=WALL, promised_until=WALL - 60)
    assert core.next_deadline() == 100.0 + LEASE
    decisions = core.tick(100.0 + LEASE, WALL + LEASE)
    assert decisions[0] == LeaseExpired("a", 1, connected=False)


def test_status_reads_like_the_latest_event() -> None:
    core = new_core()
    submit(core)
    assert core.tracks("j0") and not core.tracks("nope")
    assert core.status("nope", WALL) is None
    first = core.status("j0", WALL)
    assert first is not None and (first.event, first.state) == ("accepted", "queued")
    add(core, "a")
    report(core, "a", "j0", "started")
    started = core.status("j0", WALL)
    assert started is not None and started.event == "started"
    core.detach("a", clean=True, now=0.0, wall=WALL)
    requeued = core.status("j0", WALL)
    assert requeued is not None and requeued.event == "requeued"


# --- every job has at most one holder, whatever happens ----------------------------------


class Life:
    """Drives a core through random steps, remembering what schedulers were told."""

    def __init__(self, steal: str = "urgent", age_every: float | None = None) -> None:
        self.core = new_core(max_deliveries=1000, steal=steal, age_every=age_every)
        self.now = 0.0
        self.live: set[str] = set()
        self.ids: list[str] = []
        self.told: dict[str, tuple[str, int]] = {}  # job -> (scheduler, attempt) last assigned

    def add(self, name: str, size: int, both_tasks: bool) -> list[Decision]:
        self.live.add(name)
        held = [Held(j, attempt) for j, (s, attempt) in self.told.items() if s == name]
        tasks = ["sleep", "other"] if both_tasks else None
        return add(self.core, name, size, tasks, now=self.now, held=held)

    def drop(self, name: str, clean: bool) -> list[Decision]:
        self.live.discard(name)
        return self.core.detach(name, clean=clean, now=self.now, wall=WALL)

    def submit(self, priority: int, task: str, retries: int) -> list[Decision]:
        decisions = submit(self.core, job(priority, task=task, max_retries=retries), self.now)
        self.ids.append(reply(decisions).id)
        return decisions

    def report(self, pick: int, event: SchedulerReport) -> list[Decision]:
        if not self.ids:
            return []
        job_id = self.ids[pick % len(self.ids)]
        snapshot = self.core.job(job_id)
        who, attempt = (snapshot.holder or "a", snapshot.attempt) if snapshot else ("a", 1)
        return report(self.core, who, job_id, event, attempt, now=self.now)

    def cancel(self, pick: int) -> list[Decision]:
        return self.core.cancel(self.ids[pick % len(self.ids)], WALL) if self.ids else []

    def tick(self, seconds: float) -> list[Decision]:
        self.now += seconds
        return self.core.tick(self.now, WALL)

    def check(self, decisions: list[Decision]) -> None:
        """Attempts only grow, go to connected schedulers, and a job's holder is always
        the scheduler last told to run it, at that attempt."""
        for send in sends(decisions):
            job_id = send.assignment.id
            assert send.assignment.attempt > self.told.get(job_id, ("", 0))[1]
            assert send.scheduler in self.live
            self.told[job_id] = (send.scheduler, send.assignment.attempt)
        for job_id in self.ids:
            snapshot = self.core.job(job_id)
            if snapshot is not None and snapshot.holder is not None:
                assert self.told[job_id] == (snapshot.holder, snapshot.attempt)
                scheduler = self.core.scheduler(snapshot.holder)
                assert scheduler is not None and scheduler.outstanding > 0
        for job_id in self.core.backlog():
            assert (info(self.core, job_id).state, info(self.core, job_id).holder) == (
                "queued",
                None,
            )
        self.check_books(decisions)

    def check_books(self, decisions: list[Decision]) -> None:
        """Every held attempt is booked once; a slot is kept for each steal under way, at
        its thief; a steal is only of a job assigned to another scheduler, told to it."""
        thieves: dict[str, int] = {}
        for job_id in self.ids:
            snapshot = self.core.job(job_id)
            if snapshot is not None and snapshot.thief is not None:
                assert snapshot.state == "assigned" and snapshot.holder != snapshot.thief
                thieves[snapshot.thief] = thieves.get(snapshot.thief, 0) + 1
        for name in "abc":
            s = self.core.scheduler(name)
            if s is not None:
                assert s.busy + s.pending == s.outstanding
                assert s.incoming == thieves.get(name, 0)
        for scheduler, stop in stops(decisions):
            if stop.kind == "steal":
                snapshot = info(self.core, stop.id)
                assert (snapshot.holder, snapshot.attempt) == (scheduler, stop.attempt)


steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from("abc"), st.integers(1, 4), st.booleans()),
        st.tuples(st.just("drop"), st.sampled_from("abc"), st.booleans()),
        st.tuples(
            st.just("submit"),
            st.integers(0, 10),
            st.sampled_from(["sleep", "other"]),
            st.integers(0, 2),
        ),
        st.tuples(
            st.just("report"),
            st.integers(0, 30),
            st.sampled_from(["started", "evicted", "succeeded", "failed", "cancelled", "revoked"]),
        ),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("tick"), st.sampled_from([0.5, 2.0, 6.0])),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(steps, st.sampled_from(["urgent", "tail", "off"]), st.sampled_from([None, 1.0]))
def test_every_job_has_at_most_one_holder_whatever_happens(
    script: list[tuple[Any, ...]], steal: str, age_every: float | None
) -> None:
    life = Life(steal, age_every)
    for action, *args in script:
        life.check(getattr(life, action)(*args))


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


# --- capacity-aware placement ------------------------------------------------------------


def start(core: Dispatcher, scheduler: str, *job_ids: str, now: float = 0.0) -> None:
    for job_id in job_ids:
        assert events(report(core, scheduler, job_id, "started", now=now)) == ["started"]


def booked(core: Dispatcher, name: str) -> tuple[int, int, int, int]:
    """(busy, pending, incoming, waiting) of scheduler ``name``."""
    s = core.scheduler(name)
    assert s is not None
    return s.busy, s.pending, s.incoming, s.waiting


def test_free_slots_first_then_the_least_urgent_running_job_then_the_shortest_queue() -> None:
    core = new_core()
    add(core, "a", size=1)
    add(core, "b", size=1)
    assert assigns(submit(core, job(priority=8))) == [("a", "j0")]
    assert assigns(submit(core, job(priority=5))) == [("b", "j1")]
    start(core, "a", "j0")
    start(core, "b", "j1")
    # Full: an urgent job goes where the least urgent job runs; the next one elsewhere.
    assert assigns(submit(core, job(priority=0))) == [("a", "j2")]
    assert assigns(submit(core, job(priority=0))) == [("b", "j3")]
    # Nothing left to evict for a 9: the shortest queue (a was picked before b).
    assert assigns(submit(core, job(priority=9))) == [("a", "j4")]
    assert booked(core, "a") == (1, 2, 0, 1)  # j4 waits there and may be stolen
    assert booked(core, "b") == (1, 1, 0, 0)
    # The runner evicted j0 for j2: j0 comes back and is placed again.
    start(core, "a", "j2")
    decisions = report(core, "a", "j0", "evicted")
    assert events(decisions) == ["evicted", "assigned"]
    assert booked(core, "a")[0] == 1


def test_a_job_no_more_urgent_than_what_runs_waits_where_the_queue_is_shortest() -> None:
    core = new_core()
    add(core, "a", size=1)
    add(core, "b", size=1)
    submit(core, job(priority=3))
    submit(core, job(priority=3))
    start(core, "a", "j0")
    start(core, "b", "j1")
    got = [assigns(submit(core, job(priority=p)))[0][0] for p in (3, 4, 9, 3)]
    assert got == ["a", "b", "a", "b"]
    assert (booked(core, "a")[3], booked(core, "b")[3]) == (2, 2)


def test_v1_schedulers_are_placed_on_by_load_and_never_chosen_to_evict() -> None:
    core = new_core()
    add(core, "v1", size=1, reports=False)
    add(core, "v2", size=1)
    assert assigns(submit(core, job(priority=9, runtime=60.0))) == [("v1", "j0")]
    assert assigns(submit(core, job(priority=2))) == [("v2", "j1")]
    start(core, "v2", "j1")
    # j0 (priority 9) is not known to run: j1 at v2 is the only victim, and 5 > 2.
    assert assigns(submit(core, job(priority=5))) == [("v1", "j2")]
    assert assigns(submit(core, job(priority=0))) == [("v2", "j3")]
    assert booked(core, "v1") == (0, 2, 0, 0)  # nothing waiting at a v1 scheduler is stolen


def test_a_job_that_may_not_be_evicted_is_never_the_target() -> None:
    core = new_core(max_evictions=0)
    add(core, "a", size=1)
    submit(core, job(priority=9))
    start(core, "a", "j0")
    (send,) = sends(submit(core, job(priority=0)))
    assert send.scheduler == "a" and not send.assignment.evictable
    assert booked(core, "a") == (1, 1, 0, 1)  # it waits, as the runner will keep j0


# --- work stealing -------------------------------------------------------------------------


def queue_at_a(core: Dispatcher) -> None:
    """Scheduler a (1 slot) runs j0 (priority 0) while j1 (7) and j2 (3) wait there."""
    add(core, "a", size=1)
    submit(core, job(priority=0))
    start(core, "a", "j0")
    submit(core, job(priority=7))
    submit(core, job(priority=3))
    assert booked(core, "a") == (1, 2, 0, 2)


def stats_of(core: Dispatcher, now: float = 0.0) -> Any:
    return core.stats(now, uptime_s=1.0)


def test_an_idle_scheduler_steals_the_most_urgent_waiting_job() -> None:
    core = new_core()
    queue_at_a(core)
    decisions = add(core, "b", size=1)
    assert stops(decisions) == [("a", Stop("j2", 1, "stolen", kind="steal"))]
    assert info(core, "j2").thief == "b" and info(core, "j2").holder == "a"
    assert booked(core, "b") == (0, 0, 1, 0)  # its slot is kept for j2
    assert booked(core, "a") == (1, 2, 0, 1)  # j1 still waits there; j2 is no longer offered
    decisions = report(core, "a", "j2", "revoked")
    (send,) = sends(decisions)
    assert (send.scheduler, send.assignment.id, send.assignment.attempt) == ("b", "j2", 2)
    assert events(decisions) == ["assigned"]
    assert (info(core, "j2").deliveries, info(core, "j2").thief) == (1, None)
    assert booked(core, "b") == (0, 1, 0, 0)
    stats = stats_of(core)
    assert (stats.bus.stolen, stats.bus.steal_attempts) == (1, 1)
    by_name = {s.name: s for s in stats.schedulers}
    assert (by_name["a"].stolen_from, by_name["b"].stole) == (1, 1)


def test_tail_stealing_takes_the_last_job_of_the_longest_queue() -> None:
    core = new_core(steal="tail")
    queue_at_a(core)
    assert stops(add(core, "b", size=1)) == [("a", Stop("j1", 1, "stolen", kind="steal"))]


def test_no_stealing_when_it_is_off() -> None:
    core = new_core(steal="off")
    queue_at_a(core)
    assert stops(add(core, "b", size=1)) == []
    assert stops(report(core, "a", "j0", "succeeded")) == []


def test_a_thief_with_two_free_slots_starts_two_steals_never_two_of_one_job() -> None:
    core = new_core()
    queue_at_a(core)
    assert stops(add(core, "b", size=2)) == [
        ("a", Stop("j2", 1, "stolen", kind="steal")),
        ("a", Stop("j1", 1, "stolen", kind="steal")),
    ]
    assert stops(add(core, "c", size=1)) == []  # nothing left that is not being stolen
    assert booked(core, "b") == (0, 0, 2, 0)


def test_a_steal_fails_when_the_victim_started_the_job_first() -> None:
    core = new_core()
    queue_at_a(core)
    add(core, "b", size=1)
    report(core, "a", "j0", "succeeded")  # a starts j2 itself
    decisions = report(core, "a", "j2", "started")
    assert info(core, "j2").thief is None
    # The thief's slot is free again: it tries the next job.
    assert stops(decisions) == [("a", Stop("j1", 1, "stolen", kind="steal"))]
    stats = stats_of(core)
    assert (stats.bus.stolen, stats.bus.steal_attempts) == (0, 2)
    (ignored,) = report(core, "b", "j2", "started", attempt=2)
    assert isinstance(ignored, Ignored)  # b never got j2


def test_a_scheduler_with_jobs_waiting_in_its_own_queue_does_not_steal() -> None:
    core = new_core()
    add(core, "a", size=2)
    add(core, "b", size=1)
    assert [assigns(submit(core))[0][0] for _ in range(3)] == ["a", "b", "a"]
    start(core, "a", "j0", "j2")
    start(core, "b", "j1")
    assert [assigns(submit(core))[0][0] for _ in range(2)] == ["b", "a"]  # j3, j4 wait
    report(core, "a", "j0", "succeeded")
    decisions = report(core, "a", "j2", "succeeded")
    assert booked(core, "a") == (0, 1, 0, 1)  # a free slot, and j4 waiting for it
    assert stops(decisions) == []  # so a leaves j3 to b
    assert stops(report(core, "b", "j1", "succeeded")) == []  # and b starts j3 itself


def test_a_revoked_job_with_no_steal_under_way_is_queued_again() -> None:
    core = new_core()
    queue_at_a(core)
    decisions = report(core, "a", "j1", "revoked")
    assert events(decisions) == ["requeued", "assigned"]
    assert [d for d in decisions if isinstance(d, Requeued)][0].reason.startswith("revoked")
    assert (info(core, "j1").holder, info(core, "j1").attempt) == ("a", 2)


def test_a_victim_that_leaves_during_a_steal_gives_its_jobs_back_as_usual() -> None:
    core = new_core()
    queue_at_a(core)
    add(core, "b", size=1)
    decisions = core.detach("a", clean=True, now=1.0, wall=WALL)
    assert [d.job_id for d in decisions if isinstance(d, Requeued)] == ["j0", "j2", "j1"]
    assert info(core, "j2").thief is None
    assert assigns(decisions) == [("b", "j0"), ("b", "j2"), ("b", "j1")]
    assert booked(core, "b") == (0, 3, 0, 2)


def test_a_victim_that_loses_its_connection_has_its_steals_called_off() -> None:
    core = new_core()
    queue_at_a(core)
    add(core, "b", size=1)
    assert core.detach("a", clean=False, now=1.0, wall=WALL) == []
    assert info(core, "j2").thief is None and booked(core, "b") == (0, 0, 0, 0)
    # It comes back without j2 (it had given it up): j2 is requeued, b takes it.
    decisions = add(core, "a", size=1, now=2.0, held=[Held("j0", 1), Held("j1", 1)])
    assert assigns(decisions) == [("b", "j2")]
    assert stops(decisions) == []


def test_a_thief_that_leaves_during_a_steal_leaves_the_job_to_placement() -> None:
    core = new_core()
    queue_at_a(core)
    add(core, "b", size=1)
    core.detach("b", clean=True, now=1.0, wall=WALL)
    assert info(core, "j2").thief is None
    decisions = report(core, "a", "j2", "revoked")
    assert events(decisions) == ["requeued", "assigned"]
    assert assigns(decisions) == [("a", "j2")]


def test_a_disconnected_thief_keeps_its_lease_but_not_the_job() -> None:
    core = new_core()
    queue_at_a(core)
    add(core, "b", size=2)  # steals j2 and j1
    report(core, "a", "j1", "revoked")  # j1 reaches b
    core.detach("b", clean=False, now=1.0, wall=WALL)  # b holds j1: it keeps a lease
    decisions = report(core, "a", "j2", "revoked")
    assert assigns(decisions) == [("a", "j2")]
    assert booked(core, "b") == (0, 1, 0, 0)


def test_a_job_cancelled_during_a_steal_ends_cancelled_and_frees_the_thief() -> None:
    core = new_core()
    queue_at_a(core)
    add(core, "b", size=1)
    assert stops(core.cancel("j2", WALL)) == [("a", Stop("j2", 1, "cancelled", kind="cancel"))]
    decisions = report(core, "a", "j2", "revoked")  # it had given it up already
    assert events(decisions) == ["cancelled"]
    assert stops(decisions) == [("a", Stop("j1", 1, "stolen", kind="steal"))]


def test_a_stolen_job_that_ends_at_its_victim_frees_the_thief() -> None:
    core = new_core()
    queue_at_a(core)
    add(core, "b", size=1)
    decisions = report(core, "a", "j2", "cancelled")  # a stop crossed the steal
    assert events(decisions) == ["cancelled"]
    assert booked(core, "b")[2] == 1  # b steals j1 instead
    assert info(core, "j1").thief == "b"


def test_a_repeated_started_report_books_the_slot_once() -> None:
    core = new_core()
    add(core, "a", size=2)
    submit(core)
    start(core, "a", "j0")
    start(core, "a", "j0")
    assert booked(core, "a") == (1, 0, 0, 0)
    assert stats_of(core).bus.wait_s["5"].count == 1


# --- aging ----------------------------------------------------------------------------------


def test_waiting_jobs_age_in_the_backlog_never_past_0() -> None:
    core = new_core(age_every=10.0)
    submit(core, job(priority=5), now=0.0)
    submit(core, job(priority=1), now=30.0)
    assert core.backlog() == ["j1", "j0"]  # base priorities
    assert core.backlog(now=40.0) == ["j1", "j0"]  # 5 - 4 = 1 vs 1 - 1 = 0
    assert core.backlog(now=50.0) == ["j0", "j1"]  # both 0 now: arrival order
    decisions = add(core, "a", size=2, now=100.0)
    assert [(d.assignment.id, d.assignment.priority) for d in sends(decisions)] == [
        ("j0", 0),
        ("j1", 0),
    ]


def test_an_aged_job_evicts_where_its_base_priority_would_not() -> None:
    core = new_core(age_every=10.0)
    add(core, "a", size=1)
    submit(core, job(priority=5))
    start(core, "a", "j0")
    submit(core, job(priority=9, task="render"), now=0.0)  # nobody serves render yet
    decisions = add(core, "a", size=1, tasks=["sleep", "render"], now=60.0, held=[Held("j0", 1)])
    (send,) = sends(decisions)
    assert (send.assignment.id, send.assignment.priority) == ("j1", 3)
    assert booked(core, "a") == (1, 1, 0, 0)  # to evict j0, not to wait


def test_steals_take_the_most_urgent_aged_job() -> None:
    core = new_core(age_every=10.0)
    add(core, "a", size=1)
    submit(core, job(priority=0))
    start(core, "a", "j0")
    submit(core, job(priority=6), now=0.0)
    submit(core, job(priority=3), now=50.0)
    assert stops(add(core, "b", size=1, now=60.0)) == [("a", Stop("j1", 1, "stolen", kind="steal"))]
    (send,) = sends(report(core, "a", "j1", "revoked", now=61.0))
    assert send.assignment.priority == 0  # 6 levels aged, never below 0


def test_a_requeued_job_ages_from_its_requeue() -> None:
    core = new_core(age_every=10.0)
    add(core, "a", size=1)
    submit(core, job(priority=8), now=0.0)
    start(core, "a", "j0", now=1.0)
    decisions = report(core, "a", "j0", "evicted", now=100.0)
    assert sends(decisions)[0].assignment.priority == 8


# --- stats ----------------------------------------------------------------------------------


def test_stats_count_what_happened_and_show_what_waits_and_runs() -> None:
    core = new_core(lease=100.0)
    add(core, "a", size=1, now=0.0)
    add(core, "v1", size=2, reports=False, now=0.0)
    core.heartbeat("a", 1, 0, 2.0)
    submit(core, job(priority=4, runtime=60.0), now=0.0)  # j0 -> a
    submit(core, job(priority=4, runtime=60.0), now=0.0)  # j1 -> v1
    submit(core, job(priority=4, runtime=60.0), now=0.0)  # j2 -> v1
    submit(core, job(priority=4, runtime=60.0), now=0.0)  # j3 -> a (waits there)
    submit(core, job(priority=1, task="render"), now=0.0)  # j4: nobody serves render
    start(core, "a", "j0", now=1.5)
    stats = core.stats(3.0, uptime_s=42.0, ref="s")
    assert stats.ref == "s"
    bus = stats.bus
    assert (bus.uptime_s, bus.submitted, bus.started, bus.queued, bus.running) == (
        42.0,
        5,
        1,
        4,
        1,
    )
    assert bus.unserved == {"render": 1}
    assert bus.wait_s["4"].count == 1 and bus.wait_s["4"].max == 1.5
    a, v1 = stats.schedulers
    assert (a.name, a.protocol, a.size, a.busy, a.queued) == ("a", 2, 1, 1, 1)
    assert (a.running_priorities, a.started, a.tasks, a.heartbeat_age_s) == ([4], 1, ["sleep"], 1.0)
    assert (v1.protocol, v1.busy, v1.queued, v1.heartbeat_age_s) == (1, 2, 0, None)
    report(core, "a", "j0", "succeeded", now=4.0)
    after = core.stats(4.0, uptime_s=43.0)
    assert (after.bus.succeeded, after.schedulers[0].succeeded) == (1, 1)


def test_a_batch_may_replace_an_assigned_job() -> None:
    core = new_core()
    add(core, "a", size=1)
    submit(core, job(job_id="x"))
    decisions = core.submit_many([job(2, job_id="x", on_conflict="replace")], 0.0, WALL)
    assert reply(decisions).results == [SubmitResult(id="x", replaced=True)]
    assert stops(decisions) == [("a", Stop("x", 1, "replaced"))]
    assert [(d.scheduler, d.assignment.attempt) for d in sends(decisions)] == [("a", 2)]
    assert booked(core, "a") == (0, 1, 0, 0)


def test_a_retry_that_succeeds_leaves_no_traceback_behind() -> None:
    core = new_core()
    add(core, "a", size=1)
    submit(core, job(max_retries=1, retry_backoff=0.0))
    report(core, "a", "j0", "failed", attempt=1, error="ValueError: 1", traceback="tb 1")
    report(core, "a", "j0", "started", attempt=2)
    (done,) = emitted(report(core, "a", "j0", "succeeded", attempt=2, result=[1]))
    assert (done.event.event, done.event.result, done.event.traceback) == ("succeeded", [1], None)
    assert done.event.errors == ["ValueError: 1"]


def priorities_of(core: Dispatcher) -> dict[str, int | None]:
    """The priority in the payload of each job changed since the last call, by id."""
    changed, _ = core.take_changes()
    return {job.id: job.payload.priority for job in changed}


def test_a_job_without_a_priority_gets_its_tasks_declared_default_else_5() -> None:
    core = new_core()
    tasks, priorities = ["render", "sleep"], {"render": 2}
    core.attach("w", size=1, tasks=tasks, priorities=priorities, reports=True, now=0, wall=WALL)
    accepted = emitted(submit(core, JobPayload(task="render")))[0]
    assert (accepted.event.event, accepted.event.priority) == ("accepted", 2)
    submit(core, JobPayload(runtime=1.0))
    submit(core, JobPayload(priority=9, task="render"))
    # Resolved once, at submit, and journaled so.
    assert priorities_of(core) == {"j0": 2, "j1": 5, "j2": 9}


def test_the_latest_registration_declaring_a_default_sets_it_for_later_jobs() -> None:
    core = new_core()
    core.attach(
        "a", size=1, tasks=["render"], priorities={"render": 2}, reports=True, now=0, wall=WALL
    )
    submit(core, JobPayload(task="render"))
    core.attach(
        "b", size=1, tasks=["render"], priorities={"render": 7}, reports=True, now=0, wall=WALL
    )
    core.attach("c", size=1, tasks=["render"], reports=True, now=0, wall=WALL)
    submit(core, JobPayload(task="render"))
    assert priorities_of(core) == {"j0": 2, "j1": 7}


def test_a_job_record_without_a_priority_reads_as_the_default() -> None:
    assert Job("x", JobPayload(runtime=1.0), 0, WALL).priority == DEFAULT_PRIORITY


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
