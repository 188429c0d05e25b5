"""The schedulers the dispatch core knows, their leases and start deadlines, and which
of them serve each task."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from scheduler.policy.dispatch.config import DEFAULT_TASKS, V1_SIZE, DispatchConfig
from scheduler.policy.dispatch.decisions import SchedulerInfo
from scheduler.policy.dispatch.timers import earliest
from scheduler.policy.lease import Leases
from scheduler.policy.placement import Seat, Slots
from scheduler.policy.placement_index import Pool
from scheduler.policy.start_deadline import StartWatch
from scheduler.policy.stats import SchedulerCounters
from scheduler.protocol_stats import SchedulerStats

MAX_CACHED_TASKS: Final = 1024
"""Task names whose schedulers the core remembers between changes of the schedulers."""


@dataclass(eq=False, slots=True)
class KnownScheduler:
    """One scheduler as the core books it: what it serves, its slots, the ids of the
    jobs it holds, and what it last said about its load."""

    name: str
    tasks: frozenset[str]
    reports: bool
    slots: Slots
    connected: bool = True
    held: set[str] = field(default_factory=set)
    running: int = 0
    queued: int = 0
    last_heartbeat: float | None = None
    counters: SchedulerCounters = field(default_factory=SchedulerCounters)
    stalled: bool = False
    """It missed the start deadline: no new work until it starts something or registers."""


class Registry:
    """Every scheduler the core knows (connected, or keeping its lease), by name."""

    def __init__(self, config: DispatchConfig) -> None:
        """No scheduler yet; leases and the start deadline as ``config`` says."""
        self.by_name: dict[str, KnownScheduler] = {}
        """Every known scheduler by name, in the order they first registered."""
        self.leases = Leases(config.lease)
        deadline = config.start_deadline
        self.start_watch = None if deadline is None else StartWatch(deadline)
        # Task -> the pool of the connected schedulers serving it, and each pool by its
        # members' names (tasks served by the same schedulers share one); both are
        # dropped when the schedulers change.
        self._serving: dict[str, Pool] = {}
        self._pools: dict[tuple[str, ...], Pool] = {}
        self.task_priorities: dict[str, int] = {}
        """Task -> its default priority, as the latest scheduler declaring one registered it."""

    def __iter__(self) -> Iterator[KnownScheduler]:
        """Every known scheduler, in the order they first registered."""
        return iter(self.by_name.values())

    def info(self, name: str, waiting: int) -> SchedulerInfo | None:
        """A snapshot of scheduler ``name``, of whose jobs ``waiting`` may be stolen;
        None if unknown."""
        s = self.by_name.get(name)
        if s is None:
            return None
        return SchedulerInfo(
            s.name,
            s.slots.size,
            s.tasks,
            s.reports,
            s.connected,
            len(s.held),
            s.running,
            s.queued,
            s.last_heartbeat,
            self.leases.deadline(name),
            s.slots.busy,
            s.slots.pending,
            s.slots.incoming,
            waiting,
        )

    def add(self, name: str, reports: bool, *, connected: bool = True) -> KnownScheduler:
        """Know scheduler ``name``, with the sizes and tasks of a v1 scheduler until it
        says otherwise."""
        s = KnownScheduler(name, DEFAULT_TASKS, reports, Slots(name, V1_SIZE), connected)
        self.by_name[name] = s
        return s

    def register(
        self,
        name: str,
        size: int | None,
        tasks: Iterable[str] | None,
        reports: bool,
        priorities: Mapping[str, int] | None,
    ) -> KnownScheduler:
        """Record a registration of ``name`` (known or new): connected, not stalled."""
        s = self.by_name.get(name) or self.add(name, reports)
        s.slots.size = V1_SIZE if size is None else size
        s.tasks = DEFAULT_TASKS if tasks is None else frozenset(tasks)
        self.task_priorities.update(priorities or {})
        s.reports, s.connected, s.stalled = reports, True, False
        self.changed()
        return s

    def remove(self, s: KnownScheduler) -> None:
        """Forget ``s``, its lease and its start deadline (it holds nothing any more)."""
        assert not s.held
        s.connected = False
        self.changed()
        self.leases.drop(s.name)
        if self.start_watch is not None:
            self.start_watch.forget(s.name)
        del self.by_name[s.name]

    def renew(self, name: str, now: float) -> None:
        """A sign of life from ``name``: a v2 scheduler's lease runs from ``now``."""
        s = self.by_name.get(name)
        if s is not None and s.reports:
            self.leases.renew(name, now)

    def changed(self) -> None:
        """Which schedulers serve a task may have changed (one came, went or stalled)."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._serving.clear()

    def serving(self, task: str) -> Pool:
        """The slots of the connected schedulers serving ``task`` that are not stalled,
        indexed for placing."""
        found = self._serving.get(task)
        if found is None:
            if len(self._serving) >= MAX_CACHED_TASKS:  # producers choose task names
                self.changed()
            members = [
                s.slots
                for s in self.by_name.values()
                if s.connected and not s.stalled and task in s.tasks
            ]
            key = tuple(slots.name for slots in members)
            found = self._pools.get(key)
            if found is None:
                found = self._pools[key] = Pool(members)
            self._serving[task] = found
        return found

    def robbable(self, name: str) -> bool:
        """Whether ``name`` may be stolen from now (connected, and it reports)."""
        s = self.by_name.get(name)
        return s is not None and s.connected and s.reports

    def next_deadline(self) -> float | None:
        """The earliest lease or start deadline, or None."""
        lease = self.leases.next_deadline()
        if self.start_watch is None:
            return lease
        return earliest(lease, self.start_watch.next_deadline())

    def stats(self, s: KnownScheduler, seats: Mapping[str, Seat], now: float) -> SchedulerStats:
        """The ``stats`` entry of ``s`` at ``now``; ``seats`` books the attempts it holds."""
        running = [
            seat.priority for job_id in s.held if (seat := seats[job_id]).started is not None
        ]
        if s.reports:
            busy, queued = s.slots.busy, s.slots.pending
        else:
            # A v1 scheduler never reports a start: its jobs fill its slots, then wait.
            busy, queued = min(len(s.held), s.slots.size), max(0, len(s.held) - s.slots.size)
        age = None if s.last_heartbeat is None else max(0.0, now - s.last_heartbeat)
        return s.counters.snapshot(
            s.name,
            protocol=2 if s.reports else 1,
            size=s.slots.size,
            busy=busy,
            queued=queued,
            tasks=sorted(s.tasks),
            running_priorities=running,
            heartbeat_age_s=age,
        )
