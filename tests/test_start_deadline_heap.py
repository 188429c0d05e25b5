"""The start deadlines kept in a heap give the answers of a plain scan over every
watched scheduler (the reference below), on random sequences of events."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from scheduler.policy.start_deadline import StartWatch

DEADLINE = 3.0
NAMES = ("a", "b", "c", "d")
JOBS = ("j1", "j2", "j3")


@dataclass
class _RefWatched:
    order: deque[tuple[float, str]] = field(default_factory=deque)
    assigned: dict[str, float] = field(default_factory=dict)
    progress: float = float("-inf")


class ReferenceWatch:
    """The start deadline by a scan of every scheduler at each question."""

    def __init__(self) -> None:
        self.watched: dict[str, _RefWatched] = {}

    def assigned(self, name: str, job_id: str, now: float) -> None:
        w = self.watched.setdefault(name, _RefWatched())
        w.assigned[job_id] = now
        w.order.append((now, job_id))

    def settled(self, name: str, job_id: str) -> None:
        if name in self.watched:
            self.watched[name].assigned.pop(job_id, None)

    def progressed(self, name: str, now: float) -> None:
        self.watched.setdefault(name, _RefWatched()).progress = now

    def forget(self, name: str) -> None:
        self.watched.pop(name, None)

    def due(self, name: str) -> float | None:
        w = self.watched.get(name)
        if w is None:
            return None
        live = [t for t, j in w.order if w.assigned.get(j) == t]
        return max(live[0], w.progress) + DEADLINE if live else None

    def next_deadline(self) -> float | None:
        return min((d for n in self.watched if (d := self.due(n)) is not None), default=None)

    def overdue(self, now: float) -> list[str]:
        return [n for n in self.watched if (d := self.due(n)) is not None and d <= now]


times = st.integers(0, 12).map(float)
events = st.lists(
    st.one_of(
        st.tuples(st.just("assigned"), st.sampled_from(NAMES), st.sampled_from(JOBS), times),
        st.tuples(st.just("settled"), st.sampled_from(NAMES), st.sampled_from(JOBS)),
        st.tuples(st.just("progressed"), st.sampled_from(NAMES), times),
        st.tuples(st.just("forget"), st.sampled_from(NAMES)),
    ),
    max_size=60,
)


@given(events, st.lists(times, min_size=1, max_size=4))
def test_the_heap_answers_as_a_scan_of_every_scheduler(
    steps: list[tuple[str, ...]], asks: list[float]
) -> None:
    watch, reference = StartWatch(DEADLINE), ReferenceWatch()
    clock = 0.0
    for step in steps:
        kind, *rest = step
        args: list[Any] = list(rest)
        if kind in ("assigned", "progressed"):
            # The core's clock never goes back: each drawn time is a step forward.
            clock += args[-1]
            args[-1] = clock
        getattr(watch, kind)(*args)
        getattr(reference, kind)(*args)
        assert watch.next_deadline() == reference.next_deadline()
    for name in NAMES:
        assert watch.due(name) == reference.due(name)
    for now in asks:
        now += clock
        assert watch.overdue(now) == reference.overdue(now)
    assert watch.next_deadline() == reference.next_deadline()


def test_superseded_deadlines_do_not_pile_up() -> None:
    watch = StartWatch(DEADLINE)
    for i in range(10_000):
        watch.assigned("a", f"j{i}", float(i))
        watch.settled("a", f"j{i}")
        watch.progressed("a", float(i))
    assert len(watch._heap) <= 2 + 64
    watch.assigned("a", "last", 10_000.0)
    assert watch.next_deadline() == 10_000.0 + DEADLINE
