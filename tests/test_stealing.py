"""Steal choice with plain numbers: the index of waiting jobs and both strategies."""

from __future__ import annotations

import pytest

from scheduler.policy.aging import Aging
from scheduler.policy.stealing import (
    STEAL_STRATEGIES,
    Steal,
    Tail,
    Urgent,
    Waiter,
    WaitingJobs,
    steal_strategy,
)

SLEEP = frozenset({"sleep"})


def anyone(name: str) -> bool:
    return True


def waiting(*jobs: tuple[str, str, str, int, float]) -> WaitingJobs:
    """(scheduler, task, id, priority, since) each, in order; seq follows the order."""
    index = WaitingJobs()
    for seq, (scheduler, task, job_id, priority, since) in enumerate(jobs):
        index.add(scheduler, task, Waiter(job_id, priority, since, seq))
    return index


def test_the_index_counts_by_scheduler_and_task() -> None:
    index = waiting(("a", "sleep", "j0", 5, 0.0), ("a", "render", "j1", 5, 0.0))
    index.add("b", "sleep", Waiter("j2", 1, 0.0, 2))
    assert (len(index), index.count("a"), index.count("b"), index.count("c")) == (3, 2, 1, 0)
    assert "j1" in index and "zz" not in index
    assert list(index.schedulers()) == ["a", "b"]
    assert index.any_for({"render"}) and not index.any_for({"shell"})
    assert [list(b) for b in index.buckets("a", {"sleep"})] == [["j0"]]
    assert list(index.buckets("nobody", SLEEP)) == []
    with pytest.raises(ValueError, match="already waits"):
        index.add("b", "sleep", Waiter("j0", 5, 0.0, 9))
    assert index.discard("j1") and not index.discard("j1")
    assert not index.any_for({"render"})
    assert index.discard("j0") and index.discard("j2")
    assert (len(index), list(index.schedulers())) == (0, [])


def test_a_bucket_goes_only_when_its_last_job_does() -> None:
    index = waiting(
        ("a", "sleep", "p5-1", 5, 0.0), ("a", "sleep", "p5-2", 5, 0.0), ("a", "sleep", "p1", 1, 0.0)
    )
    assert index.discard("p5-1")
    assert sorted(list(b) for b in index.buckets("a", SLEEP)) == [["p1"], ["p5-2"]]
    assert index.discard("p5-2")
    assert [list(b) for b in index.buckets("a", SLEEP)] == [["p1"]]


def test_urgent_takes_the_most_urgent_waiting_job_anywhere() -> None:
    index = waiting(
        ("a", "sleep", "a-p5", 5, 0.0),
        ("b", "sleep", "b-p2", 2, 0.0),
        ("b", "sleep", "b-p7", 7, 0.0),
        ("c", "sleep", "c-p2", 2, 0.0),
    )
    assert Urgent().choose("idle", SLEEP, index, anyone, 0.0) == Steal("b", "b-p2")
    # Not from itself, nor from a scheduler that cannot be told now.
    assert Urgent().choose("b", SLEEP, index, anyone, 0.0) == Steal("c", "c-p2")
    assert Urgent().choose("idle", SLEEP, index, lambda v: v == "a", 0.0) == Steal("a", "a-p5")
    assert Urgent().choose("idle", SLEEP, index, lambda v: False, 0.0) is None


def test_urgent_takes_only_tasks_the_thief_serves() -> None:
    index = waiting(("a", "render", "r", 0, 0.0), ("a", "sleep", "s", 9, 0.0))
    assert Urgent().choose("idle", SLEEP, index, anyone, 0.0) == Steal("a", "s")
    assert Urgent().choose("idle", {"shell"}, index, anyone, 0.0) is None


def test_urgent_compares_aged_priorities() -> None:
    index = waiting(("a", "sleep", "old-p6", 6, 0.0), ("b", "sleep", "new-p3", 3, 95.0))
    assert Urgent().choose("idle", SLEEP, index, anyone, 100.0) == Steal("b", "new-p3")
    aged = Urgent(Aging(every=20.0))  # old-p6 is 6 - 5 = 1 now, new-p3 still 3
    assert aged.choose("idle", SLEEP, index, anyone, 100.0) == Steal("a", "old-p6")
    both_zero = waiting(("a", "sleep", "first", 2, 0.0), ("b", "sleep", "second", 1, 0.0))
    assert aged.choose("idle", SLEEP, both_zero, anyone, 100.0) == Steal("a", "first")


def test_tail_takes_the_last_job_of_the_longest_queue() -> None:
    index = waiting(
        ("a", "sleep", "a1", 3, 0.0),
        ("b", "sleep", "b-p1", 1, 0.0),
        ("b", "sleep", "b-p9-first", 9, 0.0),
        ("b", "sleep", "b-p9-last", 9, 0.0),
        ("b", "sleep", "b-p4", 4, 0.0),
    )
    assert Tail().choose("idle", SLEEP, index, anyone, 0.0) == Steal("b", "b-p9-last")
    assert Tail().choose("b", SLEEP, index, anyone, 0.0) == Steal("a", "a1")
    assert Tail().choose("idle", SLEEP, index, lambda v: v != "b", 0.0) == Steal("a", "a1")
    assert Tail().choose("idle", {"shell"}, index, anyone, 0.0) is None


def test_tail_skips_a_long_queue_of_tasks_the_thief_does_not_serve() -> None:
    index = waiting(
        ("a", "render", "r1", 5, 0.0),
        ("a", "render", "r2", 5, 0.0),
        ("b", "sleep", "s1", 5, 0.0),
    )
    assert Tail().choose("idle", SLEEP, index, anyone, 0.0) == Steal("b", "s1")
    assert Tail().choose("idle", {"sleep", "render"}, index, anyone, 0.0) == Steal("a", "r2")
    only_render = waiting(("a", "sleep", "s", 5, 0.0), ("a", "render", "r", 5, 0.0))
    only_render.add("b", "render", Waiter("r9", 5, 0.0, 9))
    assert Tail().choose("idle", SLEEP, only_render, anyone, 0.0) == Steal("a", "s")
    assert Tail().choose("idle", SLEEP, only_render, lambda v: v == "b", 0.0) is None


def test_tail_compares_aged_priorities() -> None:
    index = waiting(("a", "sleep", "old-p9", 9, 0.0), ("a", "sleep", "new-p6", 6, 99.0))
    assert Tail().choose("idle", SLEEP, index, anyone, 100.0) == Steal("a", "old-p9")
    aged = Tail(Aging(every=10.0))  # old-p9 is 0 now, new-p6 still 6
    assert aged.choose("idle", SLEEP, index, anyone, 100.0) == Steal("a", "new-p6")


def test_the_flag_picks_a_strategy() -> None:
    assert STEAL_STRATEGIES == ("urgent", "tail", "off")
    aging = Aging(every=3.0)
    urgent, tail = steal_strategy("urgent", aging), steal_strategy("tail")
    assert isinstance(urgent, Urgent) and urgent.aging == aging and urgent.name == "urgent"
    assert isinstance(tail, Tail) and tail.aging == Aging() and tail.name == "tail"
    assert steal_strategy("off") is None
    with pytest.raises(ValueError, match="steal must be one of urgent, tail, off"):
        steal_strategy("random")
