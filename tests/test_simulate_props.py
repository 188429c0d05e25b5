"""Proofs on random worlds: hypothesis draws workloads (jobs, broadcast jobs, cancels and
periodic schedules), fleets and fleet events (kills, clean stops, joins, bus restarts)
and rules, runs them through the simulator (the live dispatch core, schedule driver and
runners) and checks, after every simulated event and at the end:

* every accepted job ends in exactly one final state (nothing is left unfinished while
  a scheduler lives to run it);
* a job never has a live process at two schedulers at once (never two holders);
* no job is evicted more than ``max_evictions`` times;
* a free slot is never left idle while a job it can run waits (in the bus's backlog or,
  stealing on, stealable in another scheduler's queue) for longer than one steal round;
* within a scheduler, a job starts only if no job waiting in its queue is more urgent;
* the core's own per-job invariants (:meth:`Dispatcher.check_invariants`);
* no periodic firing runs twice: each (schedule, fire time) is fired at most once and
  accepted as a job at most once, across bus restarts, and its job ends once;
* a job the core answered ``cancelled`` ends ``cancelled``, exactly once; one being
  stopped for a cancel ends once (cancelled, or as it finished first); and no job ends
  ``cancelled`` unless it, or the broadcast it is a run of, was cancelled.

Found on the way (fixed): a broadcast job blocked on its runs when the bus restarts never
ended (the restored parent was not booked as waiting for its runs: they were not in its
``depends_on``); :func:`test_a_broadcast_across_a_bus_restart_ends` records it.

Found earlier (fixed): after a bus restart, jobs restored as waiting in a scheduler's local
queue are no longer stealable (``sessions._restore_held`` books their seat but does
not list them with the steals), so a new scheduler's free slots stay idle while they
wait; :func:`test_jobs_queued_before_a_bus_restart_can_be_stolen` records it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.policy.dispatch.config import DispatchConfig
from scheduler.policy.runner import LocalJob
from scheduler.protocol import CancelReply, JobEvent, JobPayload
from scheduler.protocol_schedules import ScheduleSpec
from scheduler.protocol_types import FINAL_EVENTS
from scheduler.simulate.engine import Simulation
from scheduler.simulate.entries import SimCancel, SimSchedule, SimUnschedule
from scheduler.simulate.fleet import Fleet, FleetEvent, SchedulerSpec
from scheduler.simulate.workload import Entry, SimJob, Workload
from scheduler.simulate.world import Settings, Trace

LATENCY = 0.01
STOP_S = 0.02
STEAL_ROUND = 4 * LATENCY + STOP_S
"""Stop to the victim, its revoked report, the assignment to the thief, and slack."""

jobs = st.lists(
    st.builds(
        SimJob,
        at=st.floats(0, 20).map(lambda t: round(t, 2)),
        payload=st.builds(
            JobPayload,
            priority=st.integers(0, 10),
            runtime=st.floats(0, 5).map(lambda t: round(t, 2)),
            timeout=st.none() | st.sampled_from([1.0, 3.0]),
            max_retries=st.integers(0, 2),
            retry_backoff=st.sampled_from([0.0, 0.5]),
            broadcast=st.integers(0, 7).map(lambda n: n == 0),
        ),
        fail=st.booleans(),
    ),
    min_size=1,
    max_size=40,
)
cancels = st.lists(
    st.tuples(st.integers(0, 39), st.floats(-0.5, 3).map(lambda t: round(t, 2))), max_size=4
)
"""(index of the job cancelled, modulo the jobs drawn; seconds after its submit)."""
schedules = st.lists(
    st.builds(
        lambda name, at, span, spec: (at, round(at + span, 2), spec(name=name)),
        st.sampled_from(["s0", "s1"]),
        st.floats(0, 10).map(lambda t: round(t, 2)),
        st.floats(3, 10),
        st.builds(
            lambda **fields: lambda name: ScheduleSpec(name, "sleep", **fields),
            every=st.sampled_from([1.0, 2.0, 3.0]),
            runtime=st.floats(0, 3).map(lambda t: round(t, 2)),
            priority=st.integers(0, 10),
            misfire_grace=st.none() | st.sampled_from([0.5, 2.0]),
            jitter=st.sampled_from([0.0, 0.3]),
            max_instances=st.integers(1, 2),
            coalesce=st.booleans(),
        ),
    ),
    min_size=1,
    max_size=2,
    unique_by=lambda entry: entry[2].name,
)
"""(added at, removed at, spec) of each schedule."""
names = ("A", "B", "C", "D")
fleet_events = st.lists(
    st.one_of(
        st.builds(
            FleetEvent,
            at=st.floats(0, 25),
            kind=st.sampled_from(["kill", "stop"]),
            scheduler=st.sampled_from(names[1:]),
        ),
        st.builds(
            lambda at, name, size: FleetEvent(at, "join", name, SchedulerSpec(name, size)),
            st.floats(0, 25),
            st.sampled_from(names[1:]),
            st.integers(1, 3),
        ),
        st.builds(
            FleetEvent, at=st.floats(0, 25), kind=st.just("bus-restart"), down=st.floats(0.1, 3)
        ),
    ),
    max_size=4,
)
rules = st.builds(
    DispatchConfig,
    lease=st.sampled_from([1.0, 5.0]),
    max_evictions=st.integers(0, 3),
    steal=st.sampled_from(["urgent", "tail", "off"]),
    age_every=st.none() | st.just(2.0),
    start_deadline=st.just(30.0),
)


@dataclass
class Watch:
    """What the checks remember between simulated events."""

    steal: bool
    live: dict[str, str] = field(default_factory=dict)
    """Job id -> the scheduler where its process lives."""
    seen: int = 0
    idle_since: dict[str, float] = field(default_factory=dict)

    def __call__(self, sim: Simulation) -> None:
        """Check what the latest simulated event did."""
        trace = sim.trace
        assert trace is not None
        for entry in trace[self.seen :]:
            if entry[0] == "start":
                self._started(sim, entry[2], entry[3])
            elif entry[0] == "end":
                assert self.live.pop(str(entry[3])) == entry[2]
        self.seen = len(trace)
        self._no_idle_slot(sim)

    def _started(self, sim: Simulation, node: object, job: object) -> None:
        assert isinstance(node, str) and isinstance(job, LocalJob)
        holder = self.live.get(job.id)
        assert holder is None, f"job {job.id} starts at {node} while it runs at {holder}"
        self.live[job.id] = node
        # A start at a scheduler of several slots restarts its idle clock: while its
        # slots fill and empty in turn, none of them stays idle for a steal round.
        self.idle_since.pop(node, None)
        waiting = sim.nodes[node].runner.snapshot().waiting
        more_urgent = [w for w in waiting if w.priority < job.priority]
        assert not more_urgent, f"{node} started {job} before more urgent {more_urgent}"

    def _no_idle_slot(self, sim: Simulation) -> None:
        if not sim.bus_up:
            self.idle_since.clear()
            return
        connected = [n for n in sim.nodes.values() if n.alive and n.connected]
        backlog = sim.core.backlog()
        for node in connected:
            others_queue = self.steal and any(
                _stealable(sim, other.name, node.name) for other in connected if other is not node
            )
            runnable = any(_runs_on(job_id, node.name) for job_id in backlog)
            if node.runner.running < node.spec.size and (runnable or others_queue):
                since = self.idle_since.setdefault(node.name, sim.now)
                assert sim.now - since <= STEAL_ROUND + 1e-9, (  # float sums
                    f"{node.name} has a free slot since {since} while jobs wait (now {sim.now})"
                )
            else:
                self.idle_since.pop(node.name, None)


def _runs_on(job_id: str, name: str) -> bool:
    """Whether scheduler ``name`` may run job ``job_id``: any but a broadcast's run
    (``PARENT/SCHEDULER``, the only ids with a ``/`` here) pinned to another."""
    return "/" not in job_id or job_id.rpartition("/")[2] == name


def _stealable(sim: Simulation, name: str, thief: str) -> bool:
    """Whether a job waits in ``name``'s queue that ``thief`` may steal: one the core
    lists as waiting there, as far as it really waits (a job whose ``started`` report
    was lost with the connection when the bus restarted runs, while the core counts it
    as waiting until its next report: no slot waits for it), and not a broadcast's run
    (pinned there)."""
    info = sim.core.scheduler(name)
    if info is None or not info.waiting:
        return False
    return any(_runs_on(job.id, thief) for job in sim.nodes[name].runner.snapshot().waiting)


@dataclass
class Ends:
    """What a trace says of each job: final events, evictions, acceptances, the final
    event's kind."""

    ends: Counter[str] = field(default_factory=Counter)
    evictions: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    last: dict[str, str] = field(default_factory=dict)


def finals(trace: Trace) -> Ends:
    """Final events, evictions and acceptances per job, from a trace."""
    seen = Ends()
    for entry in trace:
        if entry[0] != "event":
            continue
        event = entry[2]
        assert isinstance(event, JobEvent)
        if event.event == "accepted":
            seen.accepted[event.id] += 1
        elif event.event == "evicted":
            seen.evictions[event.id] += 1
        elif event.event in FINAL_EVENTS:
            seen.ends[event.id] += 1
            seen.last[event.id] = event.event
    return seen


def check_firings(trace: Trace, seen: Ends) -> None:
    """No periodic firing runs twice: fired at most once (and never also skipped or
    missed), accepted at most once, ended at most once."""
    fired = Counter(str(entry[2]) for entry in trace if entry[0] == "fired")
    skipped = {str(entry[2]) for entry in trace if entry[0] == "skipped"}
    assert all(n == 1 for n in fired.values()), f"a firing fired twice: {fired}"
    assert not fired.keys() & skipped, "a firing both fired and not run"
    for job_id in fired:
        assert seen.accepted[job_id] <= 1, f"firing {job_id} submitted twice"
        assert seen.ends[job_id] <= 1, f"firing {job_id} ran to an end twice"


def check_cancels(trace: Trace, seen: Ends) -> None:
    """A job answered ``cancelled`` ends cancelled once; one being stopped ends once;
    only a cancelled job (or a cancelled broadcast's run) ends cancelled."""
    asked: set[str] = set()
    for entry in trace:
        if entry[0] != "cancel":
            continue
        job_id, reply = str(entry[2]), entry[3]
        asked.add(job_id)
        if isinstance(reply, CancelReply) and reply.state == "cancelled":
            assert seen.last.get(job_id) == "cancelled" and seen.ends[job_id] == 1, job_id
        elif isinstance(reply, CancelReply) and reply.state == "running":
            assert seen.ends[job_id] == 1, f"{job_id} being cancelled ended {seen.ends[job_id]}x"
    for job_id, kind in seen.last.items():
        if kind == "cancelled":
            assert job_id in asked or job_id.partition("/")[0] in asked, job_id


def entries(
    jobs: list[SimJob],
    cancels: list[tuple[int, float]],
    schedules: list[tuple[float, float, ScheduleSpec]],
) -> tuple[Entry, ...]:
    """The workload: jobs with ids (``j0``, ...), their cancels, schedules added and removed."""
    named = [
        SimJob(j.at, msgspec.structs.replace(j.payload, job_id=f"j{i}"), j.fail)
        for i, j in enumerate(jobs)
    ]
    found: list[Entry] = [*named]
    for index, after in cancels:
        job = named[index % len(named)]
        found.append(SimCancel(max(0.0, job.at + after), str(job.payload.job_id)))
    for at, until, spec in schedules:
        found += [SimSchedule(at, spec), SimUnschedule(until, spec.name)]
    return tuple(sorted(found, key=lambda entry: entry.at))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    jobs=jobs,
    cancels=cancels,
    schedules=schedules,
    sizes=st.lists(st.integers(1, 3), min_size=1, max_size=4),
    events=fleet_events,
    rules=rules,
)
def test_random_worlds_keep_every_invariant(
    jobs: list[SimJob],
    cancels: list[tuple[int, float]],
    schedules: list[tuple[float, float, ScheduleSpec]],
    sizes: list[int],
    events: list[FleetEvent],
    rules: DispatchConfig,
) -> None:
    ordered = entries(jobs, cancels, schedules)
    workload = Workload(lambda: iter(ordered), frozenset({"sleep"}), len(jobs), True)
    specs = tuple(SchedulerSpec(names[i], size) for i, size in enumerate(sizes))
    fleet = Fleet(specs).with_events(events)
    watch = Watch(steal=rules.steal != "off")
    settings_ = Settings(latency=LATENCY, stop_s=STOP_S)
    sim = Simulation(workload, fleet, rules, settings_, check=True, observe=watch)
    outcome = sim.run()
    assert sim.trace is not None
    seen = finals(sim.trace)
    ends, evictions, accepted = seen.ends, seen.evictions, seen.accepted
    assert all(n == 1 for n in ends.values()), "a job ended twice"
    assert all(n == 1 for n in accepted.values()), "a job was accepted twice"
    assert set(ends) <= set(accepted)
    assert outcome.unfinished == len(accepted) - len(ends)
    # A never leaves, so every job can be run to its end.
    assert outcome.unfinished == 0
    assert not watch.live, "a process outlived the run"
    assert all(n <= rules.max_evictions for n in evictions.values())
    check_firings(sim.trace, seen)
    check_cancels(sim.trace, seen)


def test_jobs_queued_before_a_bus_restart_can_be_stolen() -> None:
    """Three 10 s jobs on one single-slot scheduler: two wait in its queue. The bus
    restarts at 1 s, and a second scheduler joins at 3 s: it should steal one."""
    burst = tuple(SimJob(0.0, JobPayload(priority=5, runtime=10.0, timeout=60.0)) for _ in range(3))
    workload = Workload(lambda: iter(burst), frozenset({"sleep"}), 3)
    fleet = Fleet((SchedulerSpec("A", 1, 60.0),)).with_events(
        [
            FleetEvent(1.0, "bus-restart", down=0.5),
            FleetEvent(3.0, "join", "B", SchedulerSpec("B", 1, 60.0)),
        ]
    )
    outcome = Simulation(workload, fleet, settings=Settings(latency=LATENCY)).run()
    assert outcome.makespan < 25.0, f"B stole nothing: makespan {outcome.makespan:.1f} s"


def test_a_broadcast_across_a_bus_restart_ends() -> None:
    """A broadcast to two schedulers whose runs are running when the bus restarts: the
    runs succeed after it, and the broadcast should end with them."""
    burst = (SimJob(0.0, JobPayload(priority=1, runtime=3.0, broadcast=True, job_id="b")),)
    workload = Workload(lambda: iter(burst), frozenset({"sleep"}), 1)
    fleet = Fleet((SchedulerSpec("A", 1), SchedulerSpec("B", 1))).with_events(
        [FleetEvent(1.0, "bus-restart", down=0.5)]
    )
    outcome = Simulation(workload, fleet, settings=Settings(latency=LATENCY)).run()
    assert outcome.counts["succeeded"] == 3, outcome.counts
    assert outcome.unfinished == 0
