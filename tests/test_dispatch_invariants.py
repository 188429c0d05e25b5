"""The dispatch core's per-job invariants hold after every input, whatever the order:
a hypothesis state machine drives a :class:`Dispatcher` with submits, schedulers that
come and go (v1 and v2), reports of every kind, cancels, steals and a moving clock, and
asks :meth:`Dispatcher.check_invariants` after each step."""

from __future__ import annotations

import itertools
import random
from typing import get_args

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from scheduler.policy.dispatch.config import DispatchConfig
from scheduler.policy.dispatch.decisions import Decision, EmitEvent, SendAssign, SendStop
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.policy.job import Job
from scheduler.policy.retry import RetryBackoff
from scheduler.protocol import Held, JobPayload, Report
from scheduler.protocol_types import SchedulerReport

WALL = 1_700_000_000.0
NAMES = ("a", "b", "c", "old")
"""Scheduler names; ``old`` registers as a v1 scheduler."""
TASKS = ("sleep", "resize")
IDS = ("x", "y")
"""Ids producers choose (with a conflict rule); others get fresh ids."""

tasks = st.sets(st.sampled_from(TASKS), min_size=1).map(sorted)


def payloads_timed(
    delay: st.SearchStrategy[float | None], depends_on: st.SearchStrategy[list[str] | None]
) -> st.SearchStrategy[JobPayload]:
    """Payloads whose ``delay`` and ``depends_on`` are drawn from these. Built once (not
    in a flatmap per draw: building ``st.builds`` reads JobPayload's signature and type
    hints, which took most of this test's time)."""
    return st.builds(
        JobPayload,
        priority=st.none() | st.integers(0, 9),
        runtime=st.floats(0.5, 4.0),
        task=st.sampled_from(TASKS),
        max_retries=st.integers(0, 2),
        retry_backoff=st.sampled_from([0.0, 0.5]),
        job_id=st.none() | st.sampled_from(IDS),
        on_conflict=st.sampled_from(["raise", "ignore", "replace"]),
        delay=delay,
        misfire_grace=st.none() | st.floats(0.0, 3.0),
        depends_on=depends_on,
        on_dependency_failure=st.sampled_from(["skip", "run"]),
        pass_results=st.booleans(),
    )


# A job waits for a time or for its dependencies, never both (the wire refuses that).
payloads = st.one_of(
    payloads_timed(st.none() | st.floats(0.5, 6.0), st.none()),
    payloads_timed(st.none(), st.none() | st.lists(st.sampled_from(IDS), max_size=2)),
)


class DispatchMachine(RuleBasedStateMachine):
    """A dispatch core and the clock and attempts a bus around it would see."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.core = Dispatcher()
        self.ids: list[str] = []
        self.steals: list[tuple[str, str, int]] = []
        """(victim, job id, attempt) of every steal stop sent and not answered."""

    @initialize(
        steal=st.sampled_from(["urgent", "tail", "off"]),
        age_every=st.none() | st.floats(1.0, 5.0),
        start_deadline=st.none() | st.floats(1.0, 5.0),
        max_evictions=st.integers(0, 2),
        max_deliveries=st.integers(1, 4),
        seed=st.integers(0, 2**16),
        misfire_grace=st.none() | st.floats(0.0, 3.0),
    )
    def configure(
        self,
        steal: str,
        age_every: float | None,
        start_deadline: float | None,
        max_evictions: int,
        max_deliveries: int,
        seed: int,
        misfire_grace: float | None,
    ) -> None:
        config = DispatchConfig(
            lease=3.0,
            max_evictions=max_evictions,
            max_deliveries=max_deliveries,
            backoff=RetryBackoff(max_delay=2.0),
            steal=steal,
            age_every=age_every,
            start_deadline=start_deadline,
            misfire_grace=misfire_grace,
        )
        counter = itertools.count()
        self.core = Dispatcher(config, random.Random(seed), new_id=lambda: f"j{next(counter)}")

    def _apply(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if isinstance(d, EmitEvent) and d.event.event == "accepted":
                if d.event.id not in self.ids:
                    self.ids.append(d.event.id)
            elif isinstance(d, SendAssign) and d.assignment.id not in self.ids:
                self.ids.append(d.assignment.id)
            elif isinstance(d, SendStop) and d.stop.kind == "steal":
                self.steals.append((d.scheduler, d.stop.id, d.stop.attempt))

    def _pick(self, index: int) -> str | None:
        return self.ids[index % len(self.ids)] if self.ids else None

    def _holding(self, name: str) -> list[Held]:
        held = []
        for job_id in self.ids:
            job = self.core.job(job_id)
            if job is not None and job.holder == name:
                held.append(Held(job_id, job.attempt))
        return held

    @rule(payload=payloads, owner=st.sampled_from([None, "p1"]))
    def submit(self, payload: JobPayload, owner: str | None) -> None:
        decisions = self.core.submit(payload, self.now, WALL + self.now, owner=owner)
        self._apply(decisions)

    @rule(
        index=st.integers(0, 100),
        failure=st.sampled_from(["skip", "run"]),
        job_id=st.none() | st.sampled_from(IDS),
    )
    def submit_after(self, index: int, failure: str, job_id: str | None) -> None:
        """A job depending on one the machine has seen assigned (or a chosen id)."""
        dep = self._pick(index) or "x"
        payload = JobPayload(
            runtime=1.0,
            job_id=job_id,
            depends_on=[dep],
            on_dependency_failure=failure,  # type: ignore[arg-type]
            pass_results=True,
        )
        self._apply(self.core.submit(payload, self.now, WALL + self.now))

    @rule(task=st.sampled_from(TASKS))
    def submit_broadcast(self, task: str) -> None:
        """A broadcast: a pinned run on every v2 scheduler serving ``task`` (or refused)."""
        payload = JobPayload(runtime=1.0, task=task, broadcast=True)
        self._apply(self.core.submit(payload, self.now, WALL + self.now))

    @rule(batch=st.lists(payloads, max_size=3))
    def submit_many(self, batch: list[JobPayload]) -> None:
        self._apply(self.core.submit_many(batch, self.now, WALL + self.now))

    @rule(
        name=st.sampled_from(NAMES),
        size=st.none() | st.integers(1, 3),
        served=st.none() | tasks,
        keep=st.sampled_from(["all", "none", "some"]),
    )
    def attach(self, name: str, size: int | None, served: list[str] | None, keep: str) -> None:
        held = [] if keep == "none" else self._holding(name)
        if keep == "some":
            held = held[::2] + [Held("gone", 1), Held("j0", 9)]
        reports = name != "old"
        decisions = self.core.attach(
            name,
            size=size,
            tasks=served,
            reports=reports,
            held=held if reports else (),
            now=self.now,
            wall=WALL + self.now,
        )
        self._apply(decisions)

    @rule(name=st.sampled_from(NAMES), clean=st.booleans())
    def detach(self, name: str, clean: bool) -> None:
        self._apply(self.core.detach(name, clean=clean, now=self.now, wall=WALL + self.now))

    @rule(name=st.sampled_from(NAMES))
    def heartbeat(self, name: str) -> None:
        self.core.heartbeat(name, 0, 0, self.now)

    @rule(
        index=st.integers(0, 100),
        event=st.sampled_from(get_args(SchedulerReport)),
        stale=st.integers(0, 3).map(lambda n: n == 0),
        evictions=st.none() | st.integers(0, 3),
    )
    def report(
        self, index: int, event: SchedulerReport, stale: bool, evictions: int | None
    ) -> None:
        job_id = self._pick(index)
        if job_id is None:
            return
        job = self.core.job(job_id)
        holder = "a" if job is None or job.holder is None else job.holder
        attempt = 1 if job is None else job.attempt - stale
        report = Report(event, job_id, max(attempt, 0), evictions=evictions)
        self._apply(self.core.report(holder, report, self.now, WALL + self.now))

    @rule(started=st.booleans())
    def answer_steal(self, started: bool) -> None:
        if not self.steals:
            return
        victim, job_id, attempt = self.steals.pop(0)
        report = Report("started" if started else "revoked", job_id, attempt)
        self._apply(self.core.report(victim, report, self.now, WALL + self.now))

    @rule(index=st.integers(0, 100), by=st.sampled_from([None, "p1", "p2"]))
    def cancel(self, index: int, by: str | None) -> None:
        job_id = self._pick(index)
        if job_id is not None:
            self._apply(self.core.cancel(job_id, WALL + self.now, by=by))

    @rule(step=st.floats(0.0, 4.0))
    def tick(self, step: float) -> None:
        self.now += step
        self._apply(self.core.tick(self.now, WALL + self.now))
        deadline = self.core.next_deadline()
        assert deadline is None or deadline > self.now

    @rule()
    def look(self) -> None:
        self.core.stats(self.now, self.now)
        for name in NAMES:
            if self.core.scheduler(name) is not None:
                self.core.load(name, self.now)
        self.core.backlog(self.now)
        self.core.take_changes()

    @invariant()
    def invariants_hold(self) -> None:
        self.core.check_invariants()


DispatchMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# A failure shrinks for minutes: give it the time to print the smallest example.
test_dispatch_invariants = pytest.mark.timeout(600)(DispatchMachine.TestCase)


def test_restored_jobs_keep_the_invariants() -> None:
    """A journal's jobs come back held (by a scheduler the core does not know yet),
    held back for a retry, or queued; each is booked as its state says."""
    core = Dispatcher(DispatchConfig(start_deadline=2.0))
    payload = JobPayload(priority=1, runtime=1.0)
    jobs = [
        Job("run", payload, 0, WALL, state="running", attempt=1, holder="a"),
        Job("got", payload, 1, WALL, state="assigned", attempt=1, holder="a"),
        Job("wait", payload, 2, WALL, state="queued", not_before=WALL + 5),
        Job("new", payload, 3, WALL),
        Job("later", JobPayload(runtime=1.0, delay=3.0), 4, WALL, state="scheduled"),
    ]
    core.restore(jobs, 5, 0.0, WALL)
    core.check_invariants()
    assert core.backlog() == ["new"]
    blocked = Job("blocked", JobPayload(runtime=1.0, depends_on=["new"]), 4, WALL, state="blocked")
    core.restore([blocked], 5, 0.0, WALL)
    core.check_invariants()
    core.attach("a", size=2, tasks=None, reports=True, held=[Held("run", 1)], now=1.0, wall=WALL)
    core.check_invariants()
    core.tick(6.0, WALL + 6)
    core.check_invariants()
