"""Capacity-aware placement with plain numbers: no core, no sockets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scheduler.policy.eviction import eviction_key
from scheduler.policy.placement import Enqueue, EvictFor, FreeSlot, Seat, Slots, place
from scheduler.policy.runner import Evict, LocalJob, Runner


def running(s: Slots, *jobs: tuple[str, int], evictable: bool = True) -> dict[str, Seat]:
    """Book ``jobs`` (id, priority) as assigned to ``s`` and started, in order."""
    seats: dict[str, Seat] = {}
    for order, (job_id, priority) in enumerate(jobs, start=100 * len(s.name)):
        seat = seats[job_id] = Seat(priority, evictable)
        s.book()
        s.start(job_id, seat, order)
    return seats


def test_booking_moves_attempts_from_pending_to_busy_and_out() -> None:
    s = Slots("a", size=3)
    seat = Seat(priority=4, evictable=True)
    s.book()
    assert (s.pending, s.busy, s.free, s.queue, s.load) == (1, 0, 2, 0, 1 / 3)
    s.start("j", seat, order=7)
    assert (s.pending, s.busy, seat.started) == (0, 1, 7)
    assert s.least_urgent() == (4, 7, "j")
    s.release("j", seat)
    assert (s.busy, s.least_urgent()) == (0, None)
    waiting = Seat(priority=1, evictable=True)
    for _ in range(4):
        s.book()
    s.incoming = 1
    assert (s.free, s.queue) == (-2, 2)
    s.release("w", waiting)
    assert s.pending == 3


def test_the_runner_s_victim_is_the_least_urgent_then_the_latest_started() -> None:
    s = Slots("a", size=4)
    seats = running(s, ("p3", 3), ("p8-old", 8), ("p8-new", 8), ("p5", 5))
    assert s.least_urgent() == (8, seats["p8-new"].started, "p8-new")
    s.spare("p8-new", 8)  # an eviction of it is on its way
    assert s.least_urgent() == (8, seats["p8-old"].started, "p8-old")
    s.spare("p8-old", 8)
    s.spare("p8-old", 8)  # twice changes nothing
    s.spare("nobody", 2)
    assert s.least_urgent() == (5, seats["p5"].started, "p5")
    s.release("p8-new", seats["p8-new"])  # spared, then gone: still counted out once
    assert s.busy == 3


def test_jobs_that_may_not_be_evicted_are_never_victims() -> None:
    s = Slots("a", size=1)
    running(s, ("keep", 9), evictable=False)
    assert s.least_urgent() is None
    assert place(0, [s]) == Enqueue("a")


def test_no_candidate_no_placement() -> None:
    assert place(5, []) is None


def test_a_free_slot_wins_least_loaded_first_ties_to_the_least_recently_picked() -> None:
    small, big = Slots("small", size=1), Slots("big", size=4)
    assert place(5, [small, big]) == FreeSlot("small")  # 0/1 and 0/4 tie; small first
    small.last_pick = 0
    assert place(5, [small, big]) == FreeSlot("big")
    big.book()
    assert place(5, [small, big]) == FreeSlot("small")  # 0/1 < 1/4
    small.book()
    assert place(5, [small, big]) == FreeSlot("big")  # small is full


def test_a_reserved_slot_is_not_free() -> None:
    a, b = Slots("a", size=1), Slots("b", size=1)
    a.incoming = 1
    assert place(5, [a, b]) == FreeSlot("b")


def test_when_all_are_full_an_urgent_job_goes_to_the_globally_least_urgent_job() -> None:
    a, b, c = Slots("a", size=2), Slots("b", size=2), Slots("c", size=2)
    running(a, ("a1", 8), ("a2", 4))
    running(b, ("b1", 8), ("b2", 8))
    running(c, ("c1", 6), ("c2", 9))
    assert place(0, [a, b, c]) == EvictFor("c", "c2")
    c.spare("c2", 9)
    # Priority 8 on a and b: the latest started of them all (b2) goes first.
    assert place(0, [a, b, c]) == EvictFor("b", "b2")
    assert place(7, [a, b, c]) == EvictFor("b", "b2")


def test_a_job_no_more_urgent_than_any_running_job_joins_the_shortest_queue() -> None:
    a, b = Slots("a", size=2), Slots("b", size=2)
    running(a, ("a1", 3), ("a2", 3))
    running(b, ("b1", 3), ("b2", 3))
    assert place(3, [a, b]) == Enqueue("a")  # equal priority does not evict
    a.book()
    a.last_pick = 5
    assert place(3, [a, b]) == Enqueue("b")
    b.book()
    b.book()
    assert place(9, [a, b]) == Enqueue("a")


def test_a_queue_tie_goes_to_the_least_loaded_then_the_least_recently_picked() -> None:
    small, big = Slots("small", size=1), Slots("big", size=3)
    running(small, ("s", 1))
    running(big, ("b1", 1), ("b2", 1), ("b3", 1))
    small.last_pick, big.last_pick = 1, 2
    assert place(5, [big, small]) == Enqueue("small")  # both full, 1/1 = 3/3, pick 1 < 2
    big.last_pick = 0
    assert place(5, [small, big]) == Enqueue("big")
    small.book()
    big.book()
    assert place(5, [small, big]) == Enqueue("big")  # one waits at each; 4/3 < 2/1


@given(st.lists(st.tuples(st.integers(0, 9), st.booleans()), min_size=1, max_size=6))
def test_placement_predicts_the_victim_the_runner_evicts(jobs: list[tuple[int, bool]]) -> None:
    """One eviction order (:func:`eviction_key`): for a full scheduler running ``jobs``
    (priority, evictable) in start order, the job placement picks for an urgent job
    is the one the scheduler's runner evicts for it."""
    runner = Runner(len(jobs))
    s = Slots("a", size=len(jobs))
    for order, (priority, evictable) in enumerate(jobs):
        runner.submit(LocalJob(f"r{order}", priority, evictable=evictable), now=0.0)
        s.book()
        s.start(f"r{order}", Seat(priority, evictable), order)
    decisions = runner.submit(LocalJob("urgent", -1), now=1.0)
    evicted = [d.job_id for d in decisions if isinstance(d, Evict)]
    where = place(-1, [s])
    assert evicted == ([where.victim] if isinstance(where, EvictFor) else [])


def test_the_victim_is_the_greatest_eviction_key() -> None:
    assert max([(3, 9), (8, 1), (8, 2)], key=lambda k: eviction_key(*k)) == (8, 2)
