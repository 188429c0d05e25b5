"""The placement index gives :func:`place`'s answer, tie-breaks included, on random
sequences of bookings; it stays small, and a closed pool is no longer told of changes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.policy.placement import FreeSlot, Seat, Slots, place
from scheduler.policy.placement_index import Pool

NAMES = ("a", "b", "c", "d")
KINDS = ("book", "book", "book", "start", "start", "release", "spare", "incoming", "pick", "size")

# (kind, scheduler, a, b): a and b are read by kind (see Fleet.do); small ranges make ties.
steps = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(0, len(NAMES) - 1),
        st.integers(0, 3),
        st.integers(0, 3),
    ),
    min_size=20,
    max_size=80,
)


class Fleet:
    """Schedulers' slots with the seats booked on each, changed step by step."""

    def __init__(self, sizes: list[int]) -> None:
        self.slots = [Slots(name, size) for name, size in zip(NAMES, sizes, strict=False)]
        self.seats: list[dict[str, Seat]] = [{} for _ in self.slots]
        self.booked = 0

    def do(self, kind: str, i: int, a: int, b: int) -> None:
        """Step ``kind`` on scheduler ``i``: book a seat of priority ``a`` (evictable
        unless ``b`` is 0); start, release or spare its seat ``a`` (started ``b``-th);
        add ``a - 1`` to its incoming; set its last pick to ``a - 1``, or its size to
        ``a + 1``."""
        i %= len(self.slots)
        s, seats = self.slots[i], self.seats[i]
        if kind == "book":
            self.booked += 1
            seats[f"j{self.booked}"] = Seat(a, b != 0)
            s.book()
        elif kind == "incoming":
            s.incoming = max(0, s.incoming + a - 1)
        elif kind == "pick":
            s.last_pick = a - 1
        elif kind == "size":
            s.size = a + 1
        else:
            self._on_seat(s, seats, kind, a, b)

    @staticmethod
    def _on_seat(s: Slots, seats: dict[str, Seat], kind: str, k: int, order: int) -> None:
        if not seats:
            return
        job_id = list(seats)[k % len(seats)]
        seat = seats[job_id]
        if kind == "start" and seat.started is None:
            s.start(job_id, seat, order)
        elif kind == "release":
            s.release(job_id, seats.pop(job_id))
        elif kind == "spare" and seat.started is not None:
            s.spare(job_id, seat.priority)


@settings(max_examples=300)
@given(
    st.lists(st.integers(1, 2), min_size=1, max_size=len(NAMES)),
    steps,
    st.integers(0, 8),
)
def test_the_pool_places_as_place_does(
    sizes: list[int], plan: list[tuple[str, int, int, int]], opened_at: int
) -> None:
    fleet = Fleet(sizes)
    pool: Pool | None = None
    for n, step in enumerate(plan):
        if n == opened_at:
            pool = Pool(fleet.slots)
        if fleet.slots:
            fleet.do(*step)
        if pool is not None:
            for priority in range(5):
                assert pool.place(priority) == place(priority, fleet.slots)
    pool = pool or Pool(fleet.slots)
    assert [pool.place(p) for p in range(5)] == [place(p, fleet.slots) for p in range(5)]


def test_superseded_entries_do_not_pile_up() -> None:
    a, b = Slots("a", 2), Slots("b", 2)
    pool = Pool([a, b])
    seat = Seat(3, evictable=True)
    for order in range(5000):
        a.book()
        a.start("j", seat, order)
        pool.place(0)  # a pool reindexes its changed members when it places
        a.release("j", seat)
        seat.started = None
    assert max(len(pool._free), len(pool._full), len(pool._victims)) <= 2 * 2 + 64
    assert pool.place(0) == place(0, [a, b]) == FreeSlot("a")


def test_a_pool_knows_its_members_and_stops_watching_when_closed() -> None:
    a, b = Slots("a", 1), Slots("b", 1)
    pool = Pool([a, b])
    assert (len(pool), list(pool), pool.get("b"), pool.get("z")) == (2, [a, b], b, None)
    pool.close()
    a.book()
    b.last_pick = 4
    assert (a._watchers, b._watchers, len(pool._free)) == ([], [], 2)
