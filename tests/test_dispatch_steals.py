"""The dispatch core brokers work stealing."""

from __future__ import annotations

from dispatch_helpers import (
    WALL,
    add,
    assigns,
    booked,
    events,
    info,
    new_core,
    queue_at_a,
    report,
    sends,
    start,
    stats_of,
    stops,
    submit,
)

from scheduler.policy.dispatch.decisions import (
    Ignored,
    Requeued,
)
from scheduler.protocol import Held, Stop

# --- work stealing -------------------------------------------------------------------------


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
