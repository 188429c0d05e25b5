"""Proofs on random worlds: hypothesis draws workloads, fleets and fleet events (kills,
clean stops, joins, bus restarts) and rules, runs them through the simulator (the live
dispatch core and runners) and checks, after every simulated event and at the end:

* every accepted job ends in exactly one final state (nothing is left unfinished while
  a scheduler lives to run it);
* a job never has a live process at two schedulers at once (never two holders);
* no job is evicted more than ``max_evictions`` times;
* a free slot is never left idle while a job it can run waits (in the bus's backlog or,
  stealing on, stealable in another scheduler's queue) for longer than one steal round;
* within a scheduler, a job starts only if no job waiting in its queue is more urgent;
* the core's own per-job invariants (:meth:`Dispatcher.check_invariants`).

Found on the way: after a bus restart, jobs restored as waiting in a scheduler's local
queue are no longer stealable (``sessions._restore_held`` books their seat but does
not list them with the steals), so a new scheduler's free slots stay idle while they
wait; :func:`test_jobs_queued_before_a_bus_restart_can_be_stolen` records it.

Periodic schedules are not simulated (they live in the bus's shell), so "no firing runs
twice" is not checked here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.policy.dispatch.config import DispatchConfig
from scheduler.policy.runner import LocalJob
from scheduler.protocol import JobEvent, JobPayload
from scheduler.protocol_types import FINAL_EVENTS
from scheduler.simulate.engine import Settings, Simulation
from scheduler.simulate.fleet import Fleet, FleetEvent, SchedulerSpec
from scheduler.simulate.workload import SimJob, Workload

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
        ),
        fail=st.booleans(),
    ),
    min_size=1,
    max_size=40,
)
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
        waiting = sim.nodes[node].runner.snapshot().waiting
        more_urgent = [w for w in waiting if w.priority < job.priority]
        assert not more_urgent, f"{node} started {job} before more urgent {more_urgent}"

    def _no_idle_slot(self, sim: Simulation) -> None:
        if not sim.bus_up:
            self.idle_since.clear()
            return
        connected = [n for n in sim.nodes.values() if n.alive and n.connected]
        backlog = bool(sim.core.backlog())
        for node in connected:
            others_queue = self.steal and any(
                _stealable(sim, other.name) for other in connected if other is not node
            )
            if node.runner.running < node.spec.size and (backlog or others_queue):
                since = self.idle_since.setdefault(node.name, sim.now)
                assert sim.now - since <= STEAL_ROUND, (
                    f"{node.name} has a free slot since {since} while jobs wait (now {sim.now})"
                )
            else:
                self.idle_since.pop(node.name, None)


def _stealable(sim: Simulation, name: str) -> int:
    """Jobs waiting in ``name``'s queue that the bus may steal (after a bus restart, the
    jobs restored as waiting in a local queue are not: see the module's docstring)."""
    info = sim.core.scheduler(name)
    return 0 if info is None else info.waiting


def finals(trace: list[tuple[object, ...]]) -> tuple[Counter[str], Counter[str], set[str]]:
    """Final events per job, evictions per job, and the accepted jobs, from a trace."""
    ends: Counter[str] = Counter()
    evictions: Counter[str] = Counter()
    accepted: set[str] = set()
    for entry in trace:
        if entry[0] != "event":
            continue
        event = entry[2]
        assert isinstance(event, JobEvent)
        if event.event == "accepted":
            accepted.add(event.id)
        elif event.event == "evicted":
            evictions[event.id] += 1
        elif event.event in FINAL_EVENTS:
            ends[event.id] += 1
    return ends, evictions, accepted


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    jobs=jobs,
    sizes=st.lists(st.integers(1, 3), min_size=1, max_size=4),
    events=fleet_events,
    rules=rules,
)
def test_random_worlds_keep_every_invariant(
    jobs: list[SimJob], sizes: list[int], events: list[FleetEvent], rules: DispatchConfig
) -> None:
    ordered = tuple(sorted(jobs, key=lambda job: job.at))
    workload = Workload(lambda: iter(ordered), frozenset({"sleep"}), len(ordered))
    specs = tuple(SchedulerSpec(names[i], size) for i, size in enumerate(sizes))
    fleet = Fleet(specs).with_events(events)
    watch = Watch(steal=rules.steal != "off")
    settings_ = Settings(latency=LATENCY, stop_s=STOP_S)
    sim = Simulation(workload, fleet, rules, settings_, check=True, observe=watch)
    outcome = sim.run()
    assert sim.trace is not None
    ends, evictions, accepted = finals(sim.trace)
    assert all(n == 1 for n in ends.values()), "a job ended twice"
    assert set(ends) <= accepted
    assert outcome.unfinished == len(accepted) - len(ends)
    # A never leaves, so every job can be run to its end.
    assert outcome.unfinished == 0
    assert not watch.live, "a process outlived the run"
    assert all(n <= rules.max_evictions for n in evictions.values())


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
