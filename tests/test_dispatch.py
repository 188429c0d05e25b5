"""The bus's dispatch core with plain numbers for time: no sockets, no event loop."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.policy.dispatch import (
    Decision,
    Dispatcher,
    EmitEvent,
    Ignored,
    Requeued,
    SendAssign,
)
from scheduler.protocol import JobPayload, Report, SchedulerReport

WALL = 1_700_000_000.0


def job(priority: int = 5, runtime: float = 1.0, task: str = "sleep") -> JobPayload:
    return JobPayload(priority=priority, runtime=runtime, task=task)


def assigns(decisions: Iterable[Decision]) -> list[tuple[str, str]]:
    """(scheduler, job id) of every assignment, in order."""
    return [(d.scheduler, d.assignment.id) for d in decisions if isinstance(d, SendAssign)]


def events(decisions: Iterable[Decision]) -> list[str]:
    return [d.event.event for d in decisions if isinstance(d, EmitEvent)]


def add(
    core: Dispatcher,
    name: str,
    size: int | None = 2,
    tasks: list[str] | None = None,
    reports: bool = True,
    now: float = 0.0,
) -> list[Decision]:
    return core.add_scheduler(name, size=size, tasks=tasks, reports=reports, now=now, wall=WALL)


def submit(
    core: Dispatcher, job_id: str, payload: JobPayload | None = None, now: float = 0.0
) -> list[Decision]:
    return core.submit(job_id, payload or job(), "p", now, WALL)


def report(
    core: Dispatcher, scheduler: str, job_id: str, event: SchedulerReport, attempt: int = 1
) -> list[Decision]:
    return core.report(scheduler, Report(event=event, id=job_id, attempt=attempt), WALL)


def holder(core: Dispatcher, job_id: str) -> str | None:
    info = core.job(job_id)
    assert info is not None
    return info.holder


def test_submit_emits_accepted_then_assigns_and_emits_assigned() -> None:
    core = Dispatcher()
    add(core, "a")
    decisions = submit(core, "j1", job(priority=3, runtime=0.5))
    assert [type(d) for d in decisions] == [EmitEvent, SendAssign, EmitEvent]
    first, send, second = decisions
    assert isinstance(first, EmitEvent) and isinstance(second, EmitEvent)
    assert isinstance(send, SendAssign)
    assert first.event.event == "accepted" and first.event.state == "queued"
    assert first.producer == "p" and first.event.time == WALL
    assert send.scheduler == "a"
    assert (send.assignment.id, send.assignment.attempt) == ("j1", 1)
    assert (send.assignment.priority, send.assignment.runtime) == (3, 0.5)
    assert send.payload == job(priority=3, runtime=0.5)
    assert second.event.event == "assigned" and second.event.state == "assigned"
    assert second.event.scheduler == "a"


def test_the_least_loaded_scheduler_gets_the_job() -> None:
    core = Dispatcher()
    add(core, "small", size=1)
    add(core, "big", size=4)
    got = [assigns(submit(core, f"j{i}"))[0][0] for i in range(5)]
    # small 0/1 vs big 0/4 tie -> small (registered first); then big until 1/4 < 1/1 stops.
    assert got == ["small", "big", "big", "big", "big"]
    assert core.load("small", 0.0) == 1.0
    assert core.load("big", 0.0) == 1.0


def test_ties_go_round_robin() -> None:
    core = Dispatcher()
    for name in ("a", "b", "c"):
        add(core, name, size=100)
    got = [assigns(submit(core, f"j{i}"))[0][0] for i in range(6)]
    assert got == ["a", "b", "c", "a", "b", "c"]


def test_equal_ratios_tie_across_sizes() -> None:
    core = Dispatcher()
    add(core, "three", size=3)
    add(core, "six", size=6)
    got = [assigns(submit(core, f"j{i}"))[0][0] for i in range(9)]
    assert got.count("three") == 3 and got.count("six") == 6


def test_a_job_has_one_holder_even_through_requeues() -> None:
    core = Dispatcher()
    add(core, "a")
    add(core, "b")
    decisions = submit(core, "j")
    assert len(assigns(decisions)) == 1
    first = holder(core, "j")
    assert first is not None
    moved = core.remove_scheduler(first, 1.0, WALL)
    assert len(assigns(moved)) == 1
    info = core.job("j")
    assert info is not None and info.holder not in (None, first) and info.attempt == 2


def test_with_no_scheduler_jobs_wait_and_go_out_by_priority_then_arrival() -> None:
    core = Dispatcher()
    for job_id, priority in [("late9", 9), ("first5", 5), ("urgent", 0), ("second5", 5)]:
        decisions = submit(core, job_id, job(priority=priority))
        assert events(decisions) == ["accepted"]
    assert core.backlog() == ["urgent", "first5", "second5", "late9"]
    info = core.job("urgent")
    assert info is not None and info.state == "queued"
    decisions = add(core, "a", size=1)
    assert assigns(decisions) == [("a", j) for j in ("urgent", "first5", "second5", "late9")]
    assert core.backlog() == []


def test_jobs_go_only_to_schedulers_serving_their_task() -> None:
    core = Dispatcher()
    add(core, "sleeper")  # tasks None: sleep only
    add(core, "shell", tasks=["shell"])
    assert assigns(submit(core, "s", job(task="shell"))) == [("shell", "s")]
    assert assigns(submit(core, "z", job(task="sleep"))) == [("sleeper", "z")]
    assert assigns(submit(core, "x", job(task="render"))) == []
    assert core.backlog() == ["x"]
    decisions = add(core, "renderer", tasks=["render", "sleep"])
    assert assigns(decisions) == [("renderer", "x")]


def test_a_new_scheduler_takes_only_the_backlog_it_serves() -> None:
    core = Dispatcher()
    submit(core, "r", job(task="render"))
    submit(core, "z", job(task="sleep"))
    assert assigns(add(core, "sleeper")) == [("sleeper", "z")]
    assert core.backlog() == ["r"]


def test_v1_load_decays_once_the_runtime_has_elapsed() -> None:
    core = Dispatcher()
    add(core, "v1", size=None, reports=False, now=0.0)
    assert core.scheduler("v1") is not None
    submit(core, "j1", job(runtime=2.0), now=0.0)
    submit(core, "j2", job(runtime=5.0), now=1.0)
    assert core.load("v1", 1.0) == pytest.approx(2 / 5)
    assert core.load("v1", 1.999) == pytest.approx(2 / 5)
    assert core.load("v1", 2.0) == pytest.approx(1 / 5)
    assert core.job("j1") is None  # forgotten: a v1 scheduler never says how it ended
    assert core.load("v1", 6.0) == 0.0
    assert len(core) == 0


def test_v1_decay_steers_the_choice() -> None:
    core = Dispatcher()
    add(core, "v1", size=1, reports=False)
    add(core, "v2", size=1)
    assert assigns(submit(core, "a", job(runtime=1.0), now=0.0)) == [("v1", "a")]
    assert assigns(submit(core, "b", now=0.5)) == [("v2", "b")]
    # v1's job has run its runtime: v1 is idle again, v2 still holds "b".
    assert assigns(submit(core, "c", now=1.0)) == [("v1", "c")]


def test_a_leaving_scheduler_loses_its_jobs_with_attempt_plus_one() -> None:
    core = Dispatcher()
    add(core, "a", size=10)
    for i, priority in enumerate((7, 2)):
        submit(core, f"j{i}", job(priority=priority))
    add(core, "b", size=10)
    decisions = core.remove_scheduler("a", 3.0, WALL)
    requeued = [d for d in decisions if isinstance(d, Requeued)]
    assert [(d.job_id, d.scheduler, d.attempt) for d in requeued] == [
        ("j1", "a", 2),
        ("j0", "a", 2),
    ]
    assert assigns(decisions) == [("b", "j1"), ("b", "j0")]
    sends = [d for d in decisions if isinstance(d, SendAssign)]
    assert {d.assignment.attempt for d in sends} == {2}
    assert core.scheduler("a") is None


def test_a_leaving_scheduler_with_no_successor_leaves_its_jobs_queued() -> None:
    core = Dispatcher()
    add(core, "a")
    submit(core, "j")
    assert assigns(core.remove_scheduler("a", 1.0, WALL)) == []
    info = core.job("j")
    assert info is not None and (info.state, info.holder, info.attempt) == ("queued", None, 2)
    decisions = add(core, "b", now=2.0)
    sends = [d for d in decisions if isinstance(d, SendAssign)]
    assert [(d.scheduler, d.assignment.attempt) for d in sends] == [("b", 2)]


def test_a_leaving_v1_scheduler_requeues_only_jobs_still_running() -> None:
    core = Dispatcher()
    add(core, "v1", reports=False, now=0.0)
    submit(core, "short", job(runtime=1.0), now=0.0)
    submit(core, "long", job(runtime=10.0), now=0.0)
    decisions = core.remove_scheduler("v1", 5.0, WALL)
    assert [d.job_id for d in decisions if isinstance(d, Requeued)] == ["long"]
    assert core.job("short") is None


def test_reports_move_the_state_and_a_final_report_forgets_the_job() -> None:
    core = Dispatcher()
    add(core, "a")
    submit(core, "j", job(priority=4, runtime=2.0))
    (started,) = report(core, "a", "j", "started")
    assert isinstance(started, EmitEvent)
    assert (started.event.event, started.event.state) == ("started", "running")
    (evicted,) = report(core, "a", "j", "evicted")
    assert isinstance(evicted, EmitEvent)
    assert (evicted.event.state, evicted.event.evictions) == ("assigned", 1)
    report(core, "a", "j", "started")
    report(core, "a", "j", "evicted")
    done = core.report(
        "a", Report("succeeded", "j", 1, exit_code=0, wall_s=2.1, cpu_s=0.1, max_rss_kb=9), WALL
    )
    (final,) = done
    assert isinstance(final, EmitEvent)
    event = final.event
    assert (event.event, event.state, event.scheduler, event.evictions) == (
        "succeeded",
        "succeeded",
        "a",
        2,
    )
    assert (event.priority, event.runtime, event.task, event.attempt) == (4, 2.0, "sleep", 1)
    assert (event.exit_code, event.wall_s, event.cpu_s, event.max_rss_kb) == (0, 2.1, 0.1, 9)
    assert final.producer == "p"
    assert core.job("j") is None and len(core) == 0
    assert core.load("a", 0.0) == 0.0
    assert (core.accepted, core.finished) == (1, 1)


def test_a_reported_eviction_count_is_never_undercut() -> None:
    core = Dispatcher()
    add(core, "a")
    submit(core, "j")
    (evicted,) = core.report("a", Report("evicted", "j", 1, evictions=1), WALL)
    assert isinstance(evicted, EmitEvent) and evicted.event.evictions == 1
    (final,) = core.report("a", Report("succeeded", "j", 1, evictions=3), WALL)
    assert isinstance(final, EmitEvent) and final.event.evictions == 3


@pytest.mark.parametrize("event", ["failed", "timed_out"])
def test_failures_are_final_too(event: SchedulerReport) -> None:
    core = Dispatcher()
    add(core, "a")
    submit(core, "j")
    assert events(report(core, "a", "j", event)) == [event]
    assert core.job("j") is None


def test_stale_foreign_and_unknown_reports_are_ignored() -> None:
    core = Dispatcher()
    add(core, "a")
    submit(core, "j")
    core.remove_scheduler("a", 1.0, WALL)
    add(core, "b")  # now holds attempt 2
    stale = report(core, "b", "j", "succeeded", attempt=1)
    foreign = report(core, "a", "j", "succeeded", attempt=2)
    unknown = report(core, "b", "nope", "started")
    for decisions, why in [
        (stale, "stale attempt 1"),
        (foreign, "held by b"),
        (unknown, "unknown"),
    ]:
        (ignored,) = decisions
        assert isinstance(ignored, Ignored) and why in ignored.reason
    info = core.job("j")
    assert info is not None and (info.state, info.holder, info.attempt) == ("assigned", "b", 2)
    assert events(report(core, "b", "j", "succeeded", attempt=2)) == ["succeeded"]


def test_a_report_about_a_queued_job_is_ignored() -> None:
    core = Dispatcher()
    submit(core, "j")
    (ignored,) = report(core, "a", "j", "started")
    assert isinstance(ignored, Ignored) and "nobody" in ignored.reason


def test_heartbeats_are_recorded_for_known_schedulers_only() -> None:
    core = Dispatcher()
    add(core, "a", size=3, tasks=["sleep", "shell"])
    core.heartbeat("a", 2, 7, 12.5)
    core.heartbeat("ghost", 1, 1, 12.5)
    info = core.scheduler("a")
    assert info is not None
    assert (info.running, info.queued, info.last_heartbeat) == (2, 7, 12.5)
    assert (info.size, info.tasks, info.reports, info.outstanding) == (
        3,
        frozenset({"sleep", "shell"}),
        True,
        0,
    )
    assert core.scheduler("ghost") is None


def test_a_v1_scheduler_that_reports_anyway_is_not_double_counted() -> None:
    core = Dispatcher()
    add(core, "v1", size=1, reports=False)
    submit(core, "j", job(runtime=1.0), now=0.0)
    assert events(report(core, "v1", "j", "succeeded")) == ["succeeded"]
    assert core.load("v1", 5.0) == 0.0
    assert (len(core), core.finished) == (0, 1)


def test_misuse_is_refused() -> None:
    core = Dispatcher()
    add(core, "a")
    with pytest.raises(ValueError, match="already registered"):
        add(core, "a")
    with pytest.raises(ValueError, match="size"):
        add(core, "b", size=0)
    submit(core, "j")
    with pytest.raises(ValueError, match="already exists"):
        submit(core, "j")
    assert core.remove_scheduler("ghost", 0.0, WALL) == []


class Life:
    """Drives a dispatcher through random steps, remembering what schedulers were told."""

    def __init__(self) -> None:
        self.core = Dispatcher()
        self.now = 0.0
        self.live: set[str] = set()
        self.ids: list[str] = []
        self.told: dict[str, str] = {}  # job id -> the scheduler it was last assigned to

    def add(self, name: str, size: int, both_tasks: bool) -> list[Decision]:
        if name in self.live:
            return []
        self.live.add(name)
        return add(self.core, name, size, ["sleep", "other"] if both_tasks else None, now=self.now)

    def remove(self, name: str) -> list[Decision]:
        self.live.discard(name)
        self.told = {j: s for j, s in self.told.items() if s != name}
        return self.core.remove_scheduler(name, self.now, WALL)

    def submit(self, priority: int, task: str) -> list[Decision]:
        self.ids.append(f"j{len(self.ids)}")
        return submit(self.core, self.ids[-1], job(priority=priority, task=task), self.now)

    def report(self, pick: int, event: SchedulerReport) -> list[Decision]:
        if not self.ids:
            return []
        job_id = self.ids[pick % len(self.ids)]
        info = self.core.job(job_id)
        who, attempt = (info.holder or "a", info.attempt) if info else ("a", 1)
        return report(self.core, who, job_id, event, attempt)

    def check(self, decisions: list[Decision]) -> None:
        """No job is handed out while another scheduler still holds it."""
        for scheduler, job_id in assigns(decisions):
            assert job_id not in self.told, f"{job_id} handed to {scheduler} twice"
            assert scheduler in self.live
            self.told[job_id] = scheduler
        for job_id, scheduler in list(self.told.items()):
            info = self.core.job(job_id)
            if info is None:
                del self.told[job_id]
            else:
                assert info.holder == scheduler
        for job_id in self.core.backlog():
            info = self.core.job(job_id)
            assert info is not None and (info.state, info.holder) == ("queued", None)


steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from("abc"), st.integers(1, 4), st.booleans()),
        st.tuples(st.just("remove"), st.sampled_from("abc")),
        st.tuples(st.just("submit"), st.integers(0, 10), st.sampled_from(["sleep", "other"])),
        st.tuples(
            st.just("report"),
            st.integers(0, 30),
            st.sampled_from(["started", "evicted", "succeeded", "failed"]),
        ),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_every_job_has_at_most_one_holder_whatever_happens(
    script: list[tuple[Any, ...]],
) -> None:
    life = Life()
    for action, *args in script:
        life.now += 0.25
        life.check(getattr(life, action)(*args))
