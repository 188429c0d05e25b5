"""The discrete-event loop: a virtual clock, a heap of ``(time, seq, event)``, the bus's
real :class:`~scheduler.policy.dispatch.dispatcher.Dispatcher` and the simulated
schedulers (:mod:`.node`).

The bus's side is what :class:`~scheduler.bus.hub.Hub` does, minus the bytes: every
input to the core (a submit, a report, a registration, a lost connection, a tick at
its next deadline) gives decisions, carried out in order: an assignment or a stop
reaches its scheduler ``latency`` seconds later (if the connection it was meant for
still stands), an event is counted (:class:`~.metrics.Recorder`). A scheduler's report
reaches the bus ``latency`` seconds later. Time is the same number on both sides
(``now`` and ``wall`` are equal: simulated seconds from the start).

Heartbeats: a connected scheduler beats every ``heartbeat_s`` (a third of the lease at
most), but sends none when it sent a report within the interval (that report renewed
its lease already, and the bus decides nothing else from a heartbeat).
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

from scheduler.policy.dispatch.config import DispatchConfig
from scheduler.policy.dispatch.decisions import (
    Decision,
    EmitEvent,
    Requeued,
    SendAssign,
    SendReply,
    SendStop,
)
from scheduler.policy.dispatch.dependencies import restore_ids
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.policy.job import Job
from scheduler.policy.runner import LocalJob
from scheduler.protocol import Accepted, Assignment, Report, Stop
from scheduler.simulate.fleet import Fleet, FleetEvent, SchedulerSpec
from scheduler.simulate.metrics import NodeStats, Recorder, Samples
from scheduler.simulate.node import SimNode
from scheduler.simulate.periodic import SimRequests
from scheduler.simulate.workload import Entry, SimJob, Workload
from scheduler.simulate.world import SIM_RULES, Outcome, Settings, Trace

_Handler = Callable[[Any], None]


class Simulation:
    """One run of ``workload`` on ``fleet`` under ``rules`` and ``settings``.

    ``check``: after every event, assert the core's invariants, keep a :data:`Trace` and
    call ``observe`` with the simulation (for tests; slow).
    """

    def __init__(
        self,
        workload: Workload,
        fleet: Fleet,
        rules: DispatchConfig = SIM_RULES,
        settings: Settings | None = None,
        *,
        check: bool = False,
        observe: Callable[[Simulation], None] | None = None,
    ) -> None:
        """Ready to :meth:`run`; nothing has happened yet."""
        self.settings = settings or Settings()
        self.rules = rules
        self.now = 0.0
        self.recorder = Recorder()
        self.trace: Trace | None = [] if check else None
        self._check = check
        self._observe = observe
        self._workload = workload
        self._fleet = fleet
        self._heap: list[tuple[float, int, _Handler, object, bool]] = []
        self._seq = itertools.count()
        self._background = 0
        self._ids = itertools.count()
        self.core = self._new_core()
        self.nodes: dict[str, SimNode] = {}
        self.running = 0
        self._failing: set[str] = set()
        self._tick_at = float("inf")
        self._bus_up = True
        self._journal: dict[str, Job] | None = (
            {} if any(e.kind == "bus-restart" for e in fleet.events) else None
        )
        self._steal_attempts = 0
        self._steals_before = 0
        self.requests = SimRequests(self, self.settings.seed)
        self._finals = workload.requests
        self._submits: Iterator[Entry] = iter(())
        self._submitted_all = False
        self.samples = None if self.settings.sample_s is None else Samples(self.settings.sample_s)

    def _new_core(self) -> Dispatcher:
        rng = random.Random(self.settings.seed)
        return Dispatcher(self.rules, rng, new_id=lambda: f"j{next(self._ids)}")

    # --- the loop ----------------------------------------------------------------------

    def at(self, t: float, fn: _Handler, arg: object) -> None:
        """Call ``fn(arg)`` at simulated time ``t`` (work: the run goes on for it)."""
        heapq.heappush(self._heap, (t, next(self._seq), fn, arg, False))

    def _later(self, t: float, fn: _Handler, arg: object) -> None:
        """Call ``fn(arg)`` at ``t``, in the background (heartbeats, samples, ticks): the
        run may end with it still pending."""
        self._background += 1
        heapq.heappush(self._heap, (t, next(self._seq), fn, arg, True))

    def run(self) -> Outcome:
        """Run until every job is final, or nothing more can happen; return what it gave."""
        began, cpu = time.perf_counter(), time.process_time()
        specs = self._fleet.schedulers
        tasks = self._workload.tasks
        for spec in specs:
            self.nodes[spec.name] = SimNode(spec, spec.tasks or tasks, self, self.settings.stop_s)
            self.at(0.0, self._connect, self.nodes[spec.name])
        for event in self._fleet.events:
            self.at(event.at, self._fleet_event, event)
        self._submits = self._workload.jobs()
        self._next_submit()
        if self.samples is not None:
            self._later(0.0, self._sample, None)
        heap = self._heap
        pop = heapq.heappop
        check = self._check
        events = 0
        while heap:
            t, _, fn, arg, background = pop(heap)
            self.now = t
            if background:
                self._background -= 1
            fn(arg)
            events += 1
            if check:
                self._checked()
            if self._submitted_all and len(heap) == self._background and self._stuck():
                break
        return self._outcome(events, time.perf_counter() - began, time.process_time() - cpu)

    def _stuck(self) -> bool:
        """Nothing is in flight: whether only jobs nobody serves (or their dependents)
        are left, which nothing can change."""
        if len(self.core) == 0:
            return True
        tally = self.core.tally()
        blocked = sum(n for (state, _), n in tally.items() if state == "blocked")
        return len(self.core) == len(self.core.backlog()) + blocked

    def _next_submit(self) -> None:
        job = next(self._submits, None)
        if job is None:
            self._submitted_all = True
        else:
            self.at(max(job.at, self.now), self._submit, job)

    # --- the bus -----------------------------------------------------------------------

    def _submit(self, arg: Entry) -> None:
        self._next_submit()
        if not isinstance(arg, SimJob):
            self.requests.request(arg)
            return
        if not self._bus_up:
            self.recorder.counts["refused"] += 1
            return
        decisions = self.core.submit(arg.payload, self.now, self.now)
        reply = decisions[0]
        if arg.fail and isinstance(reply, SendReply) and isinstance(reply.message, Accepted):
            self._failing.add(reply.message.id)
        self._apply(decisions)

    def _apply(self, decisions: list[Decision]) -> None:
        """Journal (for a restart), then carry out ``decisions`` in order, as the hub does;
        then arm the tick for the core's next deadline."""
        changed, deleted = self.core.take_changes()
        if self._journal is not None or self._finals:
            self._keep(changed, deleted)
        now = self.now
        arrive = now + self.settings.latency
        record, trace = self.recorder.event, self.trace
        for d in decisions:
            if isinstance(d, EmitEvent):
                record(d.event, now)
                if trace is not None:
                    trace.append(("event", now, d.event))
            elif isinstance(d, SendAssign):
                node = self.nodes[d.scheduler]
                self.at(arrive, self._deliver, (node, node.session, d.assignment))
            elif isinstance(d, SendStop):
                node = self.nodes[d.scheduler]
                self._steal_attempts += d.stop.kind == "steal"
                self.at(arrive, self._deliver, (node, node.session, d.stop))
            elif isinstance(d, Requeued):
                self.recorder.counts["taken_back"] += 1
        self._arm()

    def _keep(self, changed: list[Job], deleted: list[str]) -> None:
        journal = self._journal if self._journal is not None else {}
        finals = self.requests.finals  # a restart looks up the records of ended jobs
        for job in changed:
            if job.final:
                journal.pop(job.id, None)
                finals[job.id] = job
            else:
                journal[job.id] = job
        for job_id in deleted:
            journal.pop(job_id, None)
            finals.pop(job_id, None)

    def carry_out(self, decisions: list[Decision]) -> None:
        """Journal, then carry out ``decisions`` of the core, as for a submit."""
        self._apply(decisions)

    def background(self, t: float, fn: _Handler, arg: object) -> None:
        """Call ``fn(arg)`` at ``t``, in the background: the run may end with it pending."""
        self._later(t, fn, arg)

    def traced(self, kind: str, job_id: str, what: object) -> None:
        """Add ``(kind, now, job_id, what)`` to the trace of a checked run."""
        if self.trace is not None:
            self.trace.append((kind, self.now, job_id, what))

    def _arm(self) -> None:
        deadline = self.core.next_deadline()
        if deadline is not None and deadline < self._tick_at:
            self._tick_at = deadline
            self._later(max(deadline, self.now), self._tick, deadline)

    def _tick(self, deadline: float) -> None:
        if deadline != self._tick_at or not self._bus_up:
            return
        self._tick_at = float("inf")
        self._apply(self.core.tick(self.now, self.now))

    def _deliver(self, arg: tuple[SimNode, int, Assignment | Stop]) -> None:
        """A message from the bus reaches a scheduler, unless its connection is gone."""
        node, session, message = arg
        if not node.alive or node.session != session or not node.connected:
            return
        if isinstance(message, Assignment):
            node.assign(message)
        else:
            node.stop(message)

    def to_bus(self, node: SimNode, report: Report) -> None:
        """Send ``report`` from ``node``: the bus gets it ``latency`` later."""
        self.at(self.now + self.settings.latency, self._reported, (node, node.session, report))

    def _reported(self, arg: tuple[SimNode, int, Report]) -> None:
        node, session, report = arg
        if not self._bus_up or node.session != session:
            return  # the connection broke with it on its way
        if report.event == "timed_out":
            self.recorder.counts["timeouts"] += 1
        self._apply(self.core.report(node.name, report, self.now, self.now))

    def fails(self, assignment: Assignment) -> bool:
        """Whether this attempt fails when its runtime is over (the workload says)."""
        return assignment.id in self._failing

    def started(self, node: SimNode, job: LocalJob) -> None:
        """Count a started process (and trace it)."""
        self.running += 1
        if self.trace is not None:
            self.trace.append(("start", self.now, node.name, job))

    def ended(self, node: SimNode, job_id: str, ran_s: float) -> None:
        """Count a process gone (and trace it)."""
        self.running -= 1
        if self.trace is not None:
            self.trace.append(("end", self.now, node.name, job_id))

    # --- schedulers come and go --------------------------------------------------------

    def _connect(self, node: SimNode) -> None:
        """A scheduler registers (again), listing what it holds; then sends its outbox."""
        if not node.alive or not self._bus_up:
            return
        node.session += 1
        node.connected = True
        decisions = self.core.attach(
            node.name,
            size=node.spec.size,
            tasks=node.tasks,
            reports=True,
            held=node.held(),
            now=self.now,
            wall=self.now,
        )
        self._apply(decisions)
        outbox, node.outbox = node.outbox, []
        for report in outbox:
            self.to_bus(node, report)
        self._later(self.now + self._beat_every(), self._beat, (node, node.session))

    def _beat_every(self) -> float:
        return min(self.settings.heartbeat_s, self.rules.lease / 3)

    def _beat(self, arg: tuple[SimNode, int]) -> None:
        node, session = arg
        if not node.alive or node.session != session or not node.connected:
            return
        every = self._beat_every()
        due = node.last_sent + every
        if due <= self.now:
            node.last_sent = self.now
            self._later(self.now + self.settings.latency, self._heard, arg)
            due = self.now + every
        self._later(due, self._beat, arg)

    def _heard(self, arg: tuple[SimNode, int]) -> None:
        node, session = arg
        if self._bus_up and node.session == session:
            self.core.heartbeat(node.name, node.runner.running, node.runner.queued, self.now)

    def _fleet_event(self, event: FleetEvent) -> None:
        self.recorder.counts[f"fleet_{event.kind}"] += 1
        if event.kind == "bus-restart":
            self._bus_down(event)
            return
        if event.kind == "join":
            assert event.spec is not None
            self._join(event.spec)
            return
        node = self.nodes.get(event.scheduler or "")
        if node is None or not node.alive:
            return
        clean = event.kind == "stop"
        session = node.session
        node.die()
        self.at(self.now + self.settings.latency, self._closed, (node.name, session, clean))

    def _join(self, spec: SchedulerSpec) -> None:
        old = self.nodes.get(spec.name)
        if old is not None and old.alive:
            return
        node = SimNode(spec, spec.tasks or self._workload.tasks, self, self.settings.stop_s)
        if old is not None:
            node.session = old.session
        self.nodes[spec.name] = node
        self._connect(node)

    def _closed(self, arg: tuple[str, int, bool]) -> None:
        """The bus sees a scheduler's connection close (1000 if ``clean``)."""
        name, session, clean = arg
        node = self.nodes[name]
        if self._bus_up and node.session == session and not node.connected:
            self._apply(self.core.detach(name, clean=clean, now=self.now, wall=self.now))

    def _bus_down(self, event: FleetEvent) -> None:
        """The bus shuts down for a restart, promising the schedulers their jobs; it
        comes back from its journal ``event.down`` seconds later."""
        if not self._bus_up:
            return
        self._bus_up = False
        for node in self.nodes.values():
            node.connected = False
        promised = self.now + self.settings.restart_grace
        self.at(self.now + event.down, self._bus_back, promised)

    def _bus_back(self, promised: float) -> None:
        assert self._journal is not None
        old = self.core
        self._steals_before += old.steals
        self.core = self._new_core()
        jobs = sorted(self._journal.values(), key=lambda job: job.seq)
        next_seq = max((job.seq for job in jobs), default=-1) + 1
        lookup = self.requests.lookup
        stored = {i: job for i in restore_ids(jobs) if (job := lookup(i)) is not None}
        self.core.restore(
            jobs,
            max(next_seq, old.accepted),
            self.now,
            self.now,
            promised_until=promised,
            stored=stored,
        )
        self._bus_up = True
        self._tick_at = float("inf")
        self._arm()
        self.requests.bus_back()
        for node in self.nodes.values():
            if node.alive:
                self.at(self.now + self.settings.latency, self._connect, node)

    # --- measuring ---------------------------------------------------------------------

    def _sample(self, _: None) -> None:
        assert self.samples is not None
        live = [n for n in self.nodes.values() if n.alive]
        slots = sum(n.spec.size for n in live)
        busy = sum(n.runner.running for n in live)
        self.samples.add(self.now, len(self.core) - busy, busy, slots)
        self._later(self.now + self.samples.every, self._sample, None)

    def _checked(self) -> None:
        if self._bus_up:
            self.core.check_invariants()
        if self._observe is not None:
            self._observe(self)

    @property
    def bus_up(self) -> bool:
        """Whether the bus is up (not restarting)."""
        return self._bus_up

    def _outcome(self, events: int, seconds: float, cpu_seconds: float) -> Outcome:
        recorder = self.recorder
        span = recorder.makespan
        nodes = [
            NodeStats(
                n.name,
                n.spec.size,
                n.starts,
                n.busy_s,
                n.busy_s / (n.spec.size * span) if span > 0 else 0.0,
            )
            for n in self.nodes.values()
        ]
        return Outcome(
            counts=dict(recorder.counts),
            waits=recorder.wait_stats(),
            nodes=nodes,
            makespan=span,
            jobs=recorder.counts["accepted"],
            unfinished=len(self.core),
            steals=self._steals_before + self.core.steals,
            steal_attempts=self._steal_attempts,
            timeouts=recorder.counts["timeouts"],
            events=events,
            seconds=seconds,
            cpu_seconds=cpu_seconds,
            samples=self.samples,
            raw_waits={p: list(w) for p, w in recorder.waits.items()},
        )
