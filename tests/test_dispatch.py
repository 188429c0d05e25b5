"""The bus's dispatch core with plain numbers for time: no sockets, no event loop.
Dispatch to schedulers, stats, and the at-most-one-holder property (the other
rules are in ``test_dispatch_*.py``, one file per part of the core)."""

from __future__ import annotations

from typing import Any

import pytest
from dispatch_helpers import (
    WALL,
    add,
    assigns,
    booked,
    emitted,
    events,
    info,
    job,
    new_core,
    priorities_of,
    reply,
    report,
    sends,
    start,
    stops,
    submit,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.policy.dispatch.decisions import (
    Decision,
    EmitEvent,
    Requeued,
    SendAssign,
    SendReply,
)
from scheduler.policy.dispatch.registry import MAX_CACHED_TASKS
from scheduler.policy.job import Job
from scheduler.protocol import Accepted, Held, JobPayload, Stop, SubmitResult
from scheduler.protocol_types import DEFAULT_PRIORITY, SchedulerReport

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
