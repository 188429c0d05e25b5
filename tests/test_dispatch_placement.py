"""The dispatch core places jobs by the slots it books, and ages waiting jobs."""

from __future__ import annotations

from dispatch_helpers import (
    add,
    assigns,
    booked,
    events,
    job,
    new_core,
    report,
    sends,
    start,
    stops,
    submit,
)

from scheduler.protocol import Held, Stop

# --- capacity-aware placement ------------------------------------------------------------


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
