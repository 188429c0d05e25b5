"""The simulated schedulers (their names, sizes, timeouts and tasks) and what happens to
them during a run: ``kill B at 180`` (it crashes: its jobs die with it and the bus
takes them back when its lease expires), ``stop B at 180`` (a clean shutdown: its jobs
are requeued at once), ``join C at 60`` or ``join C size 8 at 60`` (a new scheduler
registers), ``bus-restart at 60`` (the bus shuts down for a restart and comes back from
its journal; the schedulers keep their jobs and register again).

Each scheduler also says what a job costs it beyond its runtime (:class:`JobCosts`, see
:mod:`.costs`): the fork before its ``started`` report, the exit and reap after it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

FleetEventKind = Literal["kill", "stop", "join", "bus-restart"]
"""What happens to a scheduler (or the bus) at an event's time."""

COST_NAMES = ("start", "exit", "dispatch", "evict")
"""The costs of :class:`JobCosts`; a fleet file names them ``start_cost`` and so on."""


@dataclass(frozen=True)
class JobCosts:
    """Seconds a scheduler spends on each job besides its runtime: ``start`` from the
    decision to start it to its ``started`` report (its fork; one fork at a time per
    scheduler), ``exit`` from the end of its runtime to its closing report and the slot
    freed (setup, exit, reap); and ``dispatch``, the time a message from the bus (an
    assignment, a stop) takes to reach it beyond the simulation's latency (the live bus
    holds its frames until their journal commit is done; the scheduler must wake up);
    ``evict``, how long an eviction keeps the scheduler busy before its next fork (the
    job that evicted reports started that much later, the evicted one ends after it).
    Zero: an ideal scheduler."""

    start: float = 0.0
    exit: float = 0.0
    start_draws: tuple[float, ...] = ()
    """When given, each job's start cost is one of these, drawn at random, instead of
    ``start``: the spread of a recorded run's costs."""
    exit_draws: tuple[float, ...] = ()
    """The same for the exit cost."""
    dispatch: float = 0.0
    dispatch_draws: tuple[float, ...] = ()
    """The same for the dispatch cost (messages about one job keep their order)."""
    evict: float = 0.0
    """Never drawn: the extra of an eviction comes on top of a drawn dispatch cost."""
    seed: int = 0
    """Seeds the draws (with the scheduler's name): another seed, other draws."""

    def __post_init__(self) -> None:
        """Refuse negative costs, naming the field."""
        for name in COST_NAMES:
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name}_cost must be >= 0 s, not {value}")
            if any(not d >= 0 for d in getattr(self, f"{name}_draws", ())):
                raise ValueError(f"{name}_cost: every drawn cost must be >= 0 s")


@dataclass(frozen=True)
class SchedulerSpec:
    """One scheduler: ``size`` slots, ``timeout`` seconds for jobs that give none (None:
    none), the ``tasks`` it serves (None: every task of the workload), what each job
    costs it beyond its runtime (``costs``)."""

    name: str
    size: int = 5
    timeout: float | None = 10.0
    tasks: frozenset[str] | None = None
    costs: JobCosts = JobCosts()

    def __post_init__(self) -> None:
        """Refuse what a scheduler would refuse, naming the field."""
        if self.size < 1:
            raise ValueError(f"{self.name}: size must be at least 1, not {self.size}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"{self.name}: timeout must be > 0, not {self.timeout}")


@dataclass(frozen=True)
class FleetEvent:
    """At ``at`` seconds, ``kind`` happens to ``scheduler`` (None for ``bus-restart``);
    a ``join`` registers ``spec``; a ``bus-restart`` keeps the bus away ``down`` s."""

    at: float
    kind: FleetEventKind
    scheduler: str | None = None
    spec: SchedulerSpec | None = None
    down: float = 1.0


@dataclass(frozen=True)
class Fleet:
    """The schedulers registered at the start and the events of the run, by time."""

    schedulers: tuple[SchedulerSpec, ...]
    events: tuple[FleetEvent, ...] = ()

    def with_events(self, events: Iterable[FleetEvent]) -> Fleet:
        """This fleet with ``events`` added (kept in time order)."""
        merged = sorted([*self.events, *events], key=lambda e: e.at)
        return replace(self, events=tuple(merged))


def letter_name(index: int) -> str:
    """``A``, ``B``, ..., ``Z``, ``AA``, ``AB``, ...: the ``index``-th scheduler's name."""
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(ord("A") + rest) + name
    return name


def uniform(count: int, size: int, timeout: float | None, costs: JobCosts = JobCosts()) -> Fleet:
    """``count`` schedulers named A, B, C, ... of ``size`` slots, ``timeout`` and ``costs``."""
    if count < 1:
        raise ValueError(f"--schedulers must be at least 1, not {count}")
    specs = (SchedulerSpec(letter_name(i), size, timeout, None, costs) for i in range(count))
    return Fleet(tuple(specs))


_EVENT = re.compile(
    r"^\s*(?P<kind>kill|stop|join)\s+(?P<name>\S+)(?:\s+size\s+(?P<size>\d+))?"
    r"\s+at\s+(?P<at>[0-9.]+)\s*$"
    r"|^\s*bus-restart(?:\s+for\s+(?P<down>[0-9.]+))?\s+at\s+(?P<bus_at>[0-9.]+)\s*$"
)


def parse_event(
    text: str, size: int = 5, timeout: float | None = 10.0, costs: JobCosts = JobCosts()
) -> FleetEvent:
    """Parse ``kill B at 180``, ``stop B at 180``, ``join C [size N] at 60`` or
    ``bus-restart [for D] at 60`` (seconds); a joining scheduler has ``size``,
    ``timeout`` and ``costs`` unless it says its size. Raises ValueError quoting the text and the
    forms it may take."""
    match = _EVENT.match(text)
    try:
        if match is None:
            raise ValueError
        if match["bus_at"] is not None:
            down = float(match["down"]) if match["down"] is not None else 1.0
            return FleetEvent(float(match["bus_at"]), "bus-restart", down=down)
        kind: FleetEventKind = "join" if match["kind"] == "join" else match["kind"]  # type: ignore[assignment]
        name = match["name"]
        spec = None
        if kind == "join":
            spec = SchedulerSpec(name, int(match["size"] or size), timeout, None, costs)
        elif match["size"] is not None:
            raise ValueError
        return FleetEvent(float(match["at"]), kind, name, spec)
    except ValueError:
        raise ValueError(
            f"--event {text!r}: expected 'kill NAME at T', 'stop NAME at T', "
            "'join NAME [size N] at T' or 'bus-restart [for D] at T'"
        ) from None


def read_fleet(path: Path, timeout: float | None = 10.0, costs: JobCosts = JobCosts()) -> Fleet:
    """A fleet from a JSON file: ``{"schedulers": [{"name": "gpu", "size": 2, "tasks":
    ["train"], "timeout": 60, "count": 3, "start_cost": 0.001, "exit_cost": 0.008,
    "dispatch_cost": 0.01}, ...],
    "events": ["kill gpu2 at 30", ...]}``. ``count`` makes that many schedulers named
    ``NAME1``, ``NAME2``, ...; ``timeout`` defaults to ``timeout``, the costs (seconds)
    to ``costs``; a joining scheduler has ``costs``. Raises ValueError naming the entry
    and field at fault."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("schedulers"), list):
        raise ValueError(f"{path}: schedulers: must be a list of schedulers")
    specs: list[SchedulerSpec] = []
    for index, entry in enumerate(data["schedulers"]):
        specs.extend(_specs(entry, f"{path}: schedulers[{index}]", timeout, costs))
    names = [s.name for s in specs]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"{path}: schedulers: names must be unique and at least one given")
    events = data.get("events", [])
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise ValueError(f"{path}: events: must be a list of strings")
    joins = (parse_event(e, timeout=timeout, costs=costs) for e in events)
    return Fleet(tuple(specs)).with_events(joins)


def _specs(
    entry: object, where: str, timeout: float | None, costs: JobCosts
) -> Sequence[SchedulerSpec]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ValueError(f"{where}: name: each scheduler needs a name")
    size, count = entry.get("size", 5), entry.get("count", 1)
    for field, value in (("size", size), ("count", count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {field}: must be a whole number >= 1, not {value!r}")
    tasks = entry.get("tasks")
    if tasks is not None and (
        not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks)
    ):
        raise ValueError(f"{where}: tasks: must be a list of task names")
    limit = entry.get("timeout", timeout)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float)):
        raise ValueError(f"{where}: timeout: must be seconds or null, not {limit!r}")
    served = None if tasks is None else frozenset(tasks)
    name = entry["name"]
    names = [name] if count == 1 else [f"{name}{i}" for i in range(1, count + 1)]
    try:
        own = _costs(entry, costs)
        return [SchedulerSpec(n, size, limit, served, own) for n in names]
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _costs(entry: dict[str, object], costs: JobCosts) -> JobCosts:
    """``costs`` with the entry's ``start_cost``, ``exit_cost``, ``dispatch_cost`` and
    ``evict_cost`` (seconds, each fixed then: no draws) where it gives them."""
    for name in COST_NAMES:
        value = _seconds(entry, f"{name}_cost")
        if value is not None:
            fields: dict[str, Any] = {name: value}
            if hasattr(costs, f"{name}_draws"):
                fields[f"{name}_draws"] = ()
            costs = replace(costs, **fields)
    return costs


def _seconds(entry: dict[str, object], field: str) -> float | None:
    value = entry.get(field)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"{field}: must be seconds, not {value!r}")
    return None if value is None else float(value)
