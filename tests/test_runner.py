"""The runner's slot, queue and eviction rules, fed plain numbers for time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.policy.runner import (
    Evict,
    LocalJob,
    Runner,
    RunningJob,
    Snapshot,
    Start,
    StopRun,
)


def full(size: int, *priorities: int) -> Runner:
    """A runner with ``size`` slots, running jobs r0, r1, ... with these priorities."""
    runner = Runner(size)
    for n, priority in enumerate(priorities):
        assert runner.submit(LocalJob(f"r{n}", priority), now=float(n)) == [Start(f"r{n}")]
    return runner


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="size"):
        Runner(0)


def test_free_slots_start_jobs_at_once() -> None:
    runner = Runner(2)
    assert runner.submit(LocalJob("a", 5), now=0) == [Start("a")]
    assert runner.submit(LocalJob("b", 5), now=1) == [Start("b")]
    assert (runner.running, runner.queued) == (2, 0)
    assert "a" in runner and "z" not in runner


def test_full_runner_queues_equal_or_less_urgent_jobs() -> None:
    runner = full(1, 5)
    assert runner.submit(LocalJob("same", 5), now=1) == []
    assert runner.submit(LocalJob("less", 9), now=2) == []
    assert (runner.running, runner.queued) == (1, 2)


def test_waiting_jobs_start_by_priority_then_arrival() -> None:
    runner = full(1, 0)
    for n, priority in enumerate([7, 3, 7, 3]):
        runner.submit(LocalJob(f"w{n}", priority), now=1)
    order = []
    running = "r0"
    for t in range(4):
        [start] = runner.exited(running, now=2 + t)
        order.append(start.job_id)
        running = start.job_id
    assert order == ["w1", "w3", "w0", "w2"]
    assert runner.exited(running, now=9) == []
    assert (runner.running, runner.queued) == (0, 0)


def test_urgent_job_evicts_the_least_urgent_running_job() -> None:
    runner = full(3, 4, 8, 6)
    assert runner.submit(LocalJob("urgent", 2), now=5) == [Evict("r1", 1), Start("urgent")]
    assert (runner.running, runner.queued) == (3, 0)
    assert "r1" not in runner and runner.snapshot().stopping == ("r1",)


def test_among_equally_least_urgent_the_most_recently_started_is_evicted() -> None:
    runner = full(3, 9, 9, 1)
    assert runner.submit(LocalJob("urgent", 0), now=5) == [Evict("r1", 1), Start("urgent")]
    # r1 is stopping; the next eviction among the 9s takes r0, the only one left.
    assert runner.submit(LocalJob("urgent2", 0), now=6) == [Evict("r0", 1), Start("urgent2")]


def test_evicted_job_leaves_the_runner_and_is_never_restarted_by_it() -> None:
    runner = full(1, 5)
    runner.submit(LocalJob("later", 5), now=1)
    assert runner.submit(LocalJob("urgent", 0), now=2) == [Evict("r0", 1), Start("urgent")]
    assert runner.exited("r0", now=3) == []
    assert runner.exited("urgent", now=4) == [Start("later")]
    assert runner.exited("later", now=5) == []
    assert runner.snapshot() == Snapshot(running=(), waiting=(), stopping=())


def test_evicted_job_sent_back_waits_for_its_old_process_then_runs() -> None:
    runner = full(1, 5)
    runner.submit(LocalJob("urgent", 0), now=1)
    # The bus gave r0 back (a new attempt) before its evicted process was gone.
    assert runner.submit(LocalJob("r0", 5, evictions=1), now=2) == []
    assert "r0" in runner and runner.queued == 1
    assert runner.exited("urgent", now=3) == []
    assert runner.exited("r0", now=4) == [Start("r0")]
    assert runner.snapshot().running == (RunningJob(LocalJob("r0", 5, evictions=1), 4),)


def test_evictions_count_across_evictions() -> None:
    runner = Runner(1)
    runner.submit(LocalJob("j", 9, evictions=2), now=0)
    assert runner.submit(LocalJob("u", 0), now=1) == [Evict("j", 3), Start("u")]


def test_a_job_that_is_not_evictable_is_never_evicted() -> None:
    runner = Runner(2)
    runner.submit(LocalJob("pinned", 9, evictable=False), now=0)
    runner.submit(LocalJob("fresh", 8), now=1)
    # "pinned" is the least urgent, but only "fresh" may be evicted.
    assert runner.submit(LocalJob("u1", 1), now=2) == [Evict("fresh", 1), Start("u1")]
    assert runner.submit(LocalJob("u2", 0), now=3) == [Evict("u1", 1), Start("u2")]
    assert runner.submit(LocalJob("u3", 0), now=4) == []


def test_no_evictable_job_means_the_newcomer_waits() -> None:
    runner = Runner(1)
    runner.submit(LocalJob("j", 9, evictable=False), now=0)
    assert runner.submit(LocalJob("u", 0), now=1) == []
    assert runner.queued == 1
    assert runner.exited("j", now=2) == [Start("u")]


def test_exit_of_unknown_or_waiting_job_changes_nothing() -> None:
    runner = full(1, 5)
    runner.submit(LocalJob("w", 5), now=1)
    before = runner.snapshot()
    assert runner.exited("nobody", now=2) == []
    assert runner.exited("w", now=2) == []
    assert runner.snapshot() == before


def test_second_exit_of_the_same_job_is_ignored() -> None:
    runner = full(1, 5)
    assert runner.exited("r0", now=1) == []
    assert runner.exited("r0", now=2) == []
    assert runner.running == 0


def test_submitting_a_held_job_again_is_refused() -> None:
    runner = full(1, 5)
    runner.submit(LocalJob("w", 5), now=1)
    runner.submit(LocalJob("u", 0), now=2)  # r0 evicted: stopping
    runner.submit(LocalJob("r0", 5), now=3)  # r0 again: parked behind its stopping process
    for job_id in ("u", "w", "r0"):
        with pytest.raises(ValueError, match="already held"):
            runner.submit(LocalJob(job_id, 1), now=4)


def test_remove_waiting_job() -> None:
    runner = full(1, 5)
    runner.submit(LocalJob("a", 5), now=1)
    runner.submit(LocalJob("b", 5), now=2)
    assert runner.remove("a", now=3) == []
    assert runner.queued == 1
    assert runner.exited("r0", now=4) == [Start("b")]


def test_remove_running_job_stops_it_and_starts_the_next() -> None:
    runner = full(1, 5)
    runner.submit(LocalJob("w", 5), now=1)
    assert runner.remove("r0", now=2) == [StopRun("r0"), Start("w")]
    assert runner.snapshot().stopping == ("r0",)
    assert "r0" not in runner
    assert runner.exited("r0", now=3) == []
    assert runner.snapshot().stopping == ()


def test_remove_parked_job_drops_it_for_good() -> None:
    runner = full(1, 5)
    runner.submit(LocalJob("u", 0), now=1)
    runner.submit(LocalJob("r0", 5), now=2)
    assert runner.remove("r0", now=3) == []
    assert runner.queued == 0
    runner.exited("u", now=4)
    assert runner.exited("r0", now=5) == []
    assert runner.running == 0


def test_remove_unknown_or_stopping_job_does_nothing() -> None:
    runner = full(1, 5)
    runner.remove("r0", now=1)
    assert runner.remove("r0", now=2) == []
    assert runner.remove("nobody", now=2) == []


def test_resubmitted_job_waits_for_its_old_process_to_exit() -> None:
    runner = full(2, 5)
    runner.remove("r0", now=1)
    assert runner.submit(LocalJob("r0", 5), now=2) == []
    assert "r0" in runner and runner.queued == 1
    assert runner.exited("r0", now=3) == [Start("r0")]


def test_clear_stops_running_jobs_and_empties_the_queue() -> None:
    runner = full(2, 5, 6)
    runner.submit(LocalJob("w", 7), now=2)
    runner.submit(LocalJob("u", 0), now=3)  # evicts r1 (stopping)
    runner.submit(LocalJob("r1", 6), now=3)  # r1 again: parked
    assert sorted(runner.clear(), key=lambda s: s.job_id) == [StopRun("r0"), StopRun("u")]
    assert (runner.running, runner.queued) == (0, 0)
    assert runner.snapshot().stopping == ("r0", "r1", "u")
    for job_id in ("r0", "r1", "u"):
        assert runner.exited(job_id, now=4) == []
    assert runner.snapshot() == Snapshot(running=(), waiting=(), stopping=())


def test_snapshot_lists_running_by_start_and_waiting_in_start_order() -> None:
    runner = full(2, 3, 4)
    runner.submit(LocalJob("w9", 9), now=2)
    runner.submit(LocalJob("w1", 1), now=3)  # evicts r1
    snap = runner.snapshot()
    assert snap.running == (RunningJob(LocalJob("r0", 3), 0.0), RunningJob(LocalJob("w1", 1), 3.0))
    assert snap.waiting == (LocalJob("w9", 9),)
    assert snap.stopping == ("r1",)


_ops = st.lists(
    st.tuples(
        st.sampled_from(["submit", "exited", "remove"]),
        st.integers(0, 7),
        st.integers(0, 10),
    ),
    max_size=60,
)


@given(size=st.integers(1, 3), ops=_ops)
def test_invariants_hold_under_any_event_sequence(
    size: int, ops: list[tuple[str, int, int]]
) -> None:
    runner = Runner(size)
    alive: set[str] = set()  # ids with a live process, as the caller would track them
    for t, (op, n, priority) in enumerate(ops):
        job_id = f"j{n}"
        if op == "submit" and job_id not in runner:
            decisions = runner.submit(LocalJob(job_id, priority, evictable=priority % 3 > 0), now=t)
        elif op == "exited" and job_id in alive:
            alive.discard(job_id)
            decisions = list(runner.exited(job_id, now=t))
        elif op == "remove":
            decisions = runner.remove(job_id, now=t)
        else:
            continue
        for decision in decisions:
            if isinstance(decision, Start):
                assert decision.job_id not in alive, "started while its process lives"
                alive.add(decision.job_id)
        snap = runner.snapshot()
        assert runner.running == len(snap.running) <= size
        assert runner.queued == len(snap.waiting)
        running_ids = {r.job.id for r in snap.running}
        assert running_ids <= alive and set(snap.stopping) <= alive
        assert not running_ids & set(snap.stopping)
        if runner.running < size:
            assert all(job.id in snap.stopping for job in snap.waiting)


def test_a_job_that_may_not_evict_waits_until_it_is_allowed_to() -> None:
    runner = Runner(size=1)
    assert runner.submit(LocalJob("slow", priority=5), 0.0) == [Start("slow")]
    held = LocalJob("held", priority=1, evict=False)
    assert runner.submit(held, 1.0) == []
    assert runner.submit(LocalJob("later", priority=1), 2.0) == [Evict("slow", 1), Start("later")]
    assert runner.allow_eviction("held", 3.0) == [], "no less urgent job runs now"
    assert runner.allow_eviction("nobody", 3.0) == []
    assert runner.exited("slow", 4.0) == []
    assert runner.remove("later", 5.0) == [StopRun("later"), Start("held")]
    assert runner.allow_eviction("held", 6.0) == [], "it runs already"


def test_an_allowed_job_evicts_a_less_urgent_one_and_keeps_its_place_otherwise() -> None:
    runner = Runner(size=1)
    runner.submit(LocalJob("slow", priority=5), 0.0)
    runner.submit(LocalJob("first", priority=3, evict=False), 1.0)
    runner.submit(LocalJob("second", priority=3, evict=False), 2.0)
    assert runner.allow_eviction("second", 3.0) == [Evict("slow", 1), Start("second")]
    assert runner.snapshot().waiting == (LocalJob("first", priority=3, evict=False),)
    assert runner.exited("slow", 4.0) == []
    assert runner.exited("second", 5.0) == [Start("first")]


def test_an_allowed_job_does_not_evict_a_job_that_may_not_be_evicted() -> None:
    runner = Runner(size=1)
    runner.submit(LocalJob("pinned", priority=9, evictable=False), 0.0)
    runner.submit(LocalJob("held", priority=0, evict=False), 1.0)
    assert runner.allow_eviction("held", 2.0) == []
