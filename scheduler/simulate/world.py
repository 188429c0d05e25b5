"""What a simulated run is given besides its workload and fleet (the rules a simulated
bus runs by default, :class:`Settings` of the simulated world) and what it gives back
(:class:`Outcome`, and the :data:`Trace` of a checked run)."""

from __future__ import annotations

from dataclasses import dataclass, field

from scheduler.policy.dispatch.config import DEFAULT_START_DEADLINE_S, DispatchConfig
from scheduler.simulate.metrics import NodeStats, Samples, WaitStats

SIM_RULES = DispatchConfig(start_deadline=DEFAULT_START_DEADLINE_S)
"""The rules a simulated bus runs unless told otherwise: a live bus's defaults."""


@dataclass(frozen=True)
class Settings:
    """How the simulated world behaves: ``latency`` seconds from the bus to a scheduler
    and back (each way); ``stop_s`` seconds a stopped process takes to go; heartbeats
    every ``heartbeat_s``; ``seed`` for the core's retry jitter; samples of the queue and
    slots every ``sample_s`` (None: none); ``restart_grace`` seconds a restarting bus
    promises the schedulers their jobs."""

    latency: float = 0.0005
    stop_s: float = 0.002
    heartbeat_s: float = 1.0
    seed: int = 0
    sample_s: float | None = None
    restart_grace: float = 60.0

    def __post_init__(self) -> None:
        """Refuse negative times, naming the field."""
        for name in ("latency", "stop_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 s, not {getattr(self, name)}")
        if not self.heartbeat_s > 0:
            raise ValueError(f"heartbeat_s must be > 0 s, not {self.heartbeat_s}")
        if self.sample_s is not None and not self.sample_s > 0:
            raise ValueError(f"sample_s must be > 0 s, not {self.sample_s}")


@dataclass
class Outcome:
    """What a run gave: counts of every event, waits by priority, per-scheduler figures,
    the makespan, what was left unfinished, and how fast the simulation ran."""

    counts: dict[str, int]
    waits: list[WaitStats]
    nodes: list[NodeStats]
    makespan: float
    jobs: int
    unfinished: int
    steals: int
    steal_attempts: int
    timeouts: int
    events: int
    seconds: float
    cpu_seconds: float
    samples: Samples | None = None
    raw_waits: dict[int, list[float]] = field(default_factory=dict)

    @property
    def jobs_per_s(self) -> float:
        """Simulated jobs per second of real time."""
        return self.jobs / self.seconds if self.seconds > 0 else 0.0

    @property
    def jobs_per_cpu_s(self) -> float:
        """Simulated jobs per second of this process's CPU time (fairer on a shared machine)."""
        return self.jobs / self.cpu_seconds if self.cpu_seconds > 0 else 0.0


Trace = list[tuple[object, ...]]
"""What a checked run records, in order: ``("event", time, JobEvent)``, ``("start",
time, node, LocalJob)``, ``("end", time, node, job id)``, and from the workload's
requests (:mod:`.periodic`) ``("cancel", time, job id, reply or None if refused)``,
``("fired", time, firing's job id, None)``, ``("skipped", time, firing's job id,
JobEvent)``."""
