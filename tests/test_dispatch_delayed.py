"""Delayed jobs in the dispatch core, on a virtual clock: scheduled until their time,
queued then, cancelled while scheduled, expired past their misfire grace (also after a
restore), and restored in their order."""

from __future__ import annotations

from typing import Any

import pytest
from dispatch_helpers import WALL, add, events, info, job, new_core, reply, submit_id

from scheduler.policy.dispatch.config import DispatchConfig
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.policy.dispatch.timers import Timers, due_of, grace_of
from scheduler.policy.job import Job
from scheduler.protocol import Accepted, CancelReply, JobPayload


def at(core: Dispatcher, now: float) -> list[str]:
    """Tick the core at ``now`` (wall moves with it); return the events."""
    return events(core.tick(now, WALL + now))


def test_a_delayed_job_is_scheduled_then_queued_and_assigned_at_its_time() -> None:
    core = new_core(lease=1000.0)
    add(core, "a")
    decisions = core.submit(job(delay=10.0), 0.0, WALL)
    assert events(decisions) == ["accepted", "scheduled"]
    job_id = reply(decisions).id
    assert info(core, job_id).state == "scheduled"
    assert core.next_deadline() == 10.0
    assert at(core, 9.9) == []
    assert at(core, 10.0) == ["queued", "assigned"]
    assert info(core, job_id).holder == "a"
    core.check_invariants()


def test_run_at_as_epoch_or_text_with_a_zone_gives_the_due_time() -> None:
    core = new_core()
    epoch = submit_id(core, job(run_at=WALL + 5))
    text = submit_id(core, job(run_at="2023-11-14T22:13:25+00:00"))  # WALL + 5
    assert info(core, epoch).state == info(core, text).state == "scheduled"
    assert core.next_deadline() == pytest.approx(5.0)


def test_a_job_due_already_runs_now_within_its_grace_and_expires_past_it() -> None:
    core = new_core()
    add(core, "a")
    now = core.submit(job(run_at=WALL - 1, misfire_grace=5.0), 0.0, WALL)
    assert events(now) == ["accepted", "assigned"]
    late = core.submit(job(run_at=WALL - 10, misfire_grace=5.0), 0.0, WALL)
    assert events(late) == ["accepted", "expired"]
    assert "misfire grace (5.0 s)" in (late[-1].event.error or "")  # type: ignore[union-attr]
    anyway = core.submit(job(run_at=WALL - 1000), 0.0, WALL)
    assert events(anyway) == ["accepted", "assigned"]


def test_cancel_while_scheduled_ends_it_and_its_timer() -> None:
    core = new_core()
    job_id = submit_id(core, job(delay=10.0))
    decisions = core.cancel(job_id, WALL)
    assert isinstance(reply(decisions), CancelReply)
    assert events(decisions) == ["cancelled"]
    assert core.next_deadline() is None
    assert at(core, 20.0) == []
    core.check_invariants()


def test_a_queued_job_no_scheduler_serves_expires_at_its_grace() -> None:
    core = new_core(misfire_grace=3.0)
    job_id = submit_id(core, job(delay=2.0))
    assert at(core, 2.0) == ["queued"]
    assert core.backlog() == [job_id]
    assert at(core, 4.9) == []
    assert at(core, 5.0) == ["expired"]
    assert core.job(job_id) is None
    core.check_invariants()


def test_a_job_handed_out_in_time_never_expires() -> None:
    core = new_core(misfire_grace=1.0, lease=1000.0)
    add(core, "a")
    job_id = submit_id(core, job(delay=2.0))
    assert at(core, 2.0) == ["queued", "assigned"]
    core.detach("a", clean=True, now=2.5, wall=WALL + 2.5)
    assert at(core, 10.0) == []
    assert info(core, job_id).state == "queued"


def test_a_late_tick_expires_a_due_job_past_its_grace() -> None:
    core = new_core(lease=1000.0)
    add(core, "a")
    submit_id(core, job(delay=2.0, misfire_grace=1.0))
    assert at(core, 4.0) == ["queued", "expired"]


def test_the_job_grace_wins_over_the_bus_default() -> None:
    core = new_core(misfire_grace=0.0)
    submit_id(core, job(delay=1.0, misfire_grace=10.0))
    assert at(core, 5.0) == ["queued"]


def scheduled(job_id: str, seq: int, **payload: Any) -> Job:
    return Job(job_id, JobPayload(runtime=1.0, **payload), seq, WALL, state="scheduled")


def test_restore_keeps_the_due_time_and_expires_what_missed_its_grace() -> None:
    """The bus was down 100 s: a job due in the gap past its grace expires, one within
    its grace runs, one still ahead waits; all by wall-clock time."""
    core = new_core(lease=1000.0)
    jobs = [
        scheduled("missed", 0, run_at=WALL + 10, misfire_grace=5.0),
        scheduled("late", 1, run_at=WALL + 90, misfire_grace=50.0),
        scheduled("ahead", 2, delay=150.0),
    ]
    core.restore(jobs, 3, 0.0, WALL + 100)
    core.check_invariants()
    add(core, "a", size=4)
    decisions = core.tick(0.0, WALL + 100)
    kinds = [(e.event.id, e.event.event) for e in decisions if hasattr(e, "event")]
    assert kinds == [
        ("missed", "queued"),
        ("missed", "expired"),
        ("late", "queued"),
        ("late", "assigned"),
    ]
    assert info(core, "ahead").state == "scheduled"
    core.heartbeat("a", 1, 0, 0.0)
    assert info(core, "ahead").state == "scheduled"
    core.check_invariants()


def test_restored_due_jobs_queue_in_their_time_order() -> None:
    core = new_core()
    jobs = [scheduled("second", 0, run_at=WALL + 2), scheduled("first", 1, run_at=WALL + 1)]
    core.restore(jobs, 2, 0.0, WALL + 10)
    decisions = core.tick(0.0, WALL + 10)
    queued = [e.event.id for e in decisions if hasattr(e, "event") and e.event.event == "queued"]
    assert queued == ["first", "second"]  # released in their time order
    assert core.backlog() == ["second", "first"]  # then they wait by priority and arrival
    assert core.tick(0.0, WALL + 10) == []


def test_a_restored_queued_delayed_job_keeps_its_misfire_deadline() -> None:
    core = new_core()
    queued = Job("q", JobPayload(runtime=1.0, run_at=WALL, misfire_grace=5.0), 0, WALL)
    core.restore([queued], 1, 0.0, WALL + 2)
    assert core.next_deadline() == 3.0
    assert at(core, 3.0) == ["expired"]


def test_a_scheduled_job_can_be_replaced() -> None:
    core = new_core()
    submit_id(core, job(delay=5.0, job_id="x"))
    again = core.submit(job(delay=9.0, job_id="x", on_conflict="replace"), 0.0, WALL)
    assert isinstance(reply(again), Accepted) and reply(again).replaced
    assert core.next_deadline() == 9.0
    core.check_invariants()


def test_status_of_a_scheduled_job() -> None:
    core = new_core()
    job_id = submit_id(core, job(delay=5.0))
    status = core.status(job_id, WALL)
    assert status is not None and (status.event, status.state) == ("scheduled", "scheduled")


def test_due_and_grace_of_a_job() -> None:
    plain = Job("p", JobPayload(), 0, WALL)
    assert due_of(plain) is None
    assert due_of(Job("d", JobPayload(delay=2.5), 0, WALL)) == WALL + 2.5
    assert due_of(Job("e", JobPayload(run_at=7), 0, WALL)) == 7.0
    assert due_of(Job("t", JobPayload(run_at="1970-01-01T01:00:00+01:00"), 0, WALL)) == 0.0
    assert grace_of(plain, None) is None
    assert grace_of(plain, 2.0) == 2.0
    assert grace_of(Job("g", JobPayload(misfire_grace=0.0), 0, WALL), 2.0) == 0.0


def test_timers_drop_entries_of_discarded_jobs() -> None:
    jobs = {"a": Job("a", JobPayload(), 0, WALL), "b": Job("b", JobPayload(), 1, WALL)}
    timers = Timers(jobs)
    timers.schedule(jobs["a"], 1.0)
    timers.misfire_at(jobs["b"], 2.0)
    timers.discard("a")
    assert timers.next_deadline() == 2.0
    assert timers.pop_due(5.0) is None
    assert timers.pop_misfire(1.0) is None
    assert timers.pop_misfire(2.0) == "b"
    assert timers.members() == (set(), set())


def test_a_negative_bus_grace_is_refused() -> None:
    with pytest.raises(ValueError, match="misfire_grace must be >= 0"):
        DispatchConfig(misfire_grace=-1.0)
