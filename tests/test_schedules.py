"""The pure schedule book on a virtual wall clock: interval and cron (with DST), catch-up,
max_instances, jitter, pause/resume, and a property: no firing runs twice or is skipped
silently, over random ticks and restarts."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.policy import schedules
from scheduler.policy.schedules import (
    Fire,
    Missed,
    ScheduleBook,
    ScheduleState,
    Skip,
    due_times,
    fire_after,
    fire_times,
    firing_id,
    spec_problem,
)
from scheduler.protocol_schedules import ScheduleSpec

T0 = 1_800_000_000.0  # a multiple of 1, 2, 5 and 10: interval grids line up with it


def spec(**changes: object) -> ScheduleSpec:
    base = ScheduleSpec(name="tick", task="noop", every=10.0)
    return msgspec.structs.replace(base, **changes)


def none_live(job_id: str) -> bool:
    return False


def all_live(job_id: str) -> bool:
    return True


def book_with(made: ScheduleSpec, now: float = T0, seed: int = 1) -> ScheduleBook:
    book = ScheduleBook(random.Random(seed))
    assert book.upsert(made, now)
    return book


def berlin(year: int, month: int, day: int, hour: int, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()


# --- specs and times --------------------------------------------------------------------


def test_spec_problems_name_the_field() -> None:
    assert spec_problem(spec()) is None
    assert spec_problem(spec(every=None, cron="*/5 * * * *", tz="Europe/Berlin")) is None
    assert spec_problem(spec(every=None)) == (
        "every",
        "every: give exactly one of every (seconds) and cron (an expression)",
    )
    assert spec_problem(spec(cron="* * * * *"))[0] == "every"  # type: ignore[index]
    assert spec_problem(spec(tz="Mars/Olympus"))[0] == "tz"  # type: ignore[index]
    assert spec_problem(spec(tz="../etc"))[0] == "tz"  # type: ignore[index]
    problem = spec_problem(spec(every=None, cron="61 * * * *"))
    assert problem is not None and problem[0] == "cron" and "61 * * * *" in problem[1]


def test_an_interval_fires_on_multiples_of_every_since_the_epoch() -> None:
    assert fire_after(spec(), T0) == T0 + 10
    assert fire_after(spec(), T0 + 3) == T0 + 10
    assert fire_times(spec(every=0.5), T0 + 0.2, 3) == [T0 + 0.5, T0 + 1.0, T0 + 1.5]
    # a step whose float multiple rounds back onto ``after`` still moves forward
    assert fire_after(spec(every=0.001), 0.0015) > 0.0015


def test_cron_in_berlin_across_the_spring_and_autumn_dst_changes() -> None:
    daily = spec(every=None, cron="30 2 * * *", tz="Europe/Berlin")
    # 2026-03-29 02:30 does not exist in Berlin: croniter moves that day's firing to 03:00
    times = fire_times(daily, berlin(2026, 3, 28, 12), 3)
    assert times == [berlin(2026, 3, 29, 3), berlin(2026, 3, 30, 2, 30), berlin(2026, 3, 31, 2, 30)]
    hourly = spec(every=None, cron="0 * * * *", tz="Europe/Berlin")
    # 02:00 happens twice on 2026-10-25: two distinct UTC instants, an hour apart
    times = fire_times(hourly, berlin(2026, 10, 25, 0, 30), 4)
    assert [t - times[0] for t in times] == [0, 3600, 7200, 10800]
    utc = [datetime.fromtimestamp(t, UTC).hour for t in times]
    assert utc == [23, 0, 1, 2]


def test_firing_ids_name_the_schedule_and_the_time_in_utc() -> None:
    assert firing_id("tick", T0) == "tick@2027-01-15T08:00:00Z"
    assert firing_id("tick", T0 + 0.5) == "tick@2027-01-15T08:00:00.500Z"


def test_due_times_keeps_the_latest_of_a_long_backlog() -> None:
    skipped, last_skipped, times = due_times(spec(every=1.0), T0, T0 + 1500)
    assert (skipped, last_skipped, len(times)) == (501, T0 + 500, 1000)
    assert times[0] == T0 + 501 and times[-1] == T0 + 1500
    minutely = spec(every=None, cron="* * * * *")
    skipped, last_skipped, times = due_times(minutely, T0, T0 + 60 * 1005)
    assert (skipped, last_skipped, len(times)) == (6, T0 + 300, 1000)
    assert due_times(minutely, T0, T0 + 59) == (0, T0, [T0])


# --- the book ---------------------------------------------------------------------------


def test_an_interval_schedule_fires_each_time_once() -> None:
    book = book_with(spec())
    assert book.next_deadline() == T0 + 10
    assert book.tick(T0 + 9.9, none_live) == []
    (fire,) = book.tick(T0 + 10.001, none_live)
    assert isinstance(fire, Fire) and fire.scheduled == T0 + 10
    assert fire.payload.job_id == firing_id("tick", T0 + 10)
    assert fire.payload.on_conflict == "ignore" and fire.payload.task == "noop"
    assert book.tick(T0 + 10.002, none_live) == []
    assert book.next_deadline() == T0 + 20
    info = book.states()[0].info()
    assert (info.last_fire, info.last_job, info.last_outcome) == (
        T0 + 10,
        fire.payload.job_id,
        "submitted",
    )


def test_after_downtime_coalesce_runs_one_late_firing_and_reports_the_rest() -> None:
    book = book_with(spec(misfire_grace=25.0))
    firings = book.tick(T0 + 55, none_live)
    assert firings[0] == Missed("tick", 2, T0 + 10, T0 + 20, "late")
    assert firings[1] == Missed("tick", 2, T0 + 30, T0 + 40, "coalesced")
    fire = firings[2]
    assert isinstance(fire, Fire) and fire.scheduled == T0 + 50
    assert book.next_deadline() == T0 + 60


def test_without_coalesce_every_firing_within_the_grace_runs() -> None:
    book = book_with(spec(coalesce=False, max_instances=10))
    firings = book.tick(T0 + 35, none_live)
    assert [f.scheduled for f in firings if isinstance(f, Fire)] == [T0 + 10, T0 + 20, T0 + 30]


def test_a_firing_past_its_grace_is_missed_not_run() -> None:
    book = book_with(spec(misfire_grace=1.0))
    assert book.tick(T0 + 12, none_live) == [Missed("tick", 1, T0 + 10, T0 + 10, "late")]


def test_a_backlog_past_the_bound_is_counted_not_listed() -> None:
    book = book_with(spec(every=1.0))
    firings = book.tick(T0 + 1500.5, none_live)
    assert firings[0] == Missed("tick", 500, T0 + 1, T0 + 500, "backlog")
    assert firings[1] == Missed("tick", 999, T0 + 501, T0 + 1499, "coalesced")
    assert isinstance(firings[2], Fire) and firings[2].scheduled == T0 + 1500


def test_max_instances_skips_a_firing_while_the_previous_one_runs() -> None:
    book = book_with(spec())
    (first,) = book.tick(T0 + 10, all_live)
    assert isinstance(first, Fire)
    (skip,) = book.tick(T0 + 20, all_live)
    assert skip == Skip("tick", T0 + 20, (first.job_id,), 1)
    assert book.states()[0].last_outcome == "skipped: 1 earlier firings still running"
    (third,) = book.tick(T0 + 30, none_live)
    assert isinstance(third, Fire)


def test_max_instances_two_allows_an_overlap() -> None:
    book = book_with(spec(max_instances=2))
    assert isinstance(book.tick(T0 + 10, all_live)[0], Fire)
    assert isinstance(book.tick(T0 + 20, all_live)[0], Fire)
    assert isinstance(book.tick(T0 + 30, all_live)[0], Skip)


def test_jitter_delays_each_firing_within_its_bound_and_keeps_the_id() -> None:
    book = book_with(spec(jitter=3.0), seed=7)
    for n in range(1, 50):
        due = book.next_deadline()
        assert due is not None and T0 + 10 * n <= due <= T0 + 10 * n + 3
        assert book.tick(due - 1e-6, none_live) == [] or due - 1e-6 < T0 + 10 * n
        (fire,) = book.tick(due, none_live)
        assert isinstance(fire, Fire) and fire.scheduled == T0 + 10 * n


def test_pause_stops_firing_and_resume_starts_after_now() -> None:
    book = book_with(spec())
    assert book.pause("tick") and not book.pause("tick")
    assert book.next_deadline() is None
    assert book.tick(T0 + 100, none_live) == []
    assert book.resume("tick", T0 + 105) and not book.resume("tick", T0 + 105)
    assert book.next_deadline() == T0 + 110


def test_trigger_fires_now_and_leaves_the_schedule_alone() -> None:
    book = book_with(spec())
    fire = book.trigger("tick", T0 + 3.25, none_live)
    assert isinstance(fire, Fire) and fire.manual and fire.scheduled == T0 + 3.25
    assert fire.payload.job_id == "tick@2027-01-15T08:00:03.250Z"
    assert book.next_deadline() == T0 + 10
    assert isinstance(book.trigger("tick", T0 + 4, all_live), Skip)
    again = book_with(spec(every=None, cron="0 0 1 1 *"))
    first = again.trigger("tick", T0, all_live)
    assert again.trigger("tick", T0, all_live) == first, "the same time finds its own job"


def test_upsert_by_name_makes_one_schedule_and_keeps_its_next_time() -> None:
    book = book_with(spec())
    book.take_changes()
    assert not book.upsert(spec(), T0 + 5), "the same spec from another worker changes nothing"
    assert book.take_changes() == ([], [])
    assert book.upsert(spec(priority=2), T0 + 5)
    assert book.next_deadline() == T0 + 10
    assert book.upsert(spec(every=4.0), T0 + 5)
    assert book.next_deadline() == T0 + 8
    book.pause("tick")
    assert book.upsert(spec(every=3.0), T0 + 5)
    assert book.next_deadline() is None and "tick" in book
    changed, removed = book.take_changes()
    assert [s.spec.name for s in changed] == ["tick"] and removed == []


def test_remove_and_restore() -> None:
    book = book_with(spec())
    assert book.remove("tick") and not book.remove("tick")
    assert book.get("tick") is None and book.take_changes() == ([], ["tick"])
    again = ScheduleBook()
    again.restore([ScheduleState(spec(), next_fire=T0, due=T0)])
    assert again.next_deadline() == T0 and again.take_changes() == ([], [])


def test_record_notes_the_latest_firings_outcome_only() -> None:
    book = book_with(spec())
    (fire,) = book.tick(T0 + 10, none_live)
    assert isinstance(fire, Fire)
    book.take_changes()
    book.record("tick", "tick@old", "failed")
    book.record("gone", "x", "failed")
    assert book.take_changes() == ([], [])
    book.record("tick", fire.job_id, "succeeded")
    book.record("tick", fire.job_id, "succeeded")
    changed, _ = book.take_changes()
    assert changed[0].last_outcome == "succeeded"


# --- the property -----------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(0.01, 40.0), st.booleans(), st.booleans()), min_size=1, max_size=40
    ),
    every=st.sampled_from([0.5, 1.0, 3.0, 7.0]),
    grace=st.none() | st.floats(0.0, 20.0),
    coalesce=st.booleans(),
    jitter=st.sampled_from([0.0, 0.4]),
)
def test_no_firing_runs_twice_or_is_skipped_silently(
    steps: list[tuple[float, bool, bool]],
    every: float,
    grace: float | None,
    coalesce: bool,
    jitter: float,
) -> None:
    """Random ticks; a restart rebuilds the book from the journal, sometimes from the state
    before the latest tick (that tick's schedule row lost, its jobs kept): every fire time
    up to the last tick is run once (by job id) or reported skipped or missed."""
    made = spec(every=every, misfire_grace=grace, coalesce=coalesce, jitter=jitter)
    book = book_with(made, T0)
    jobs: dict[str, int] = {}
    accounted: dict[float, str] = {}
    journal = [_copy(s) for s in book.states()]
    now = T0
    for delay, restart, lose_last in steps:
        if restart:
            book = ScheduleBook(random.Random(3))
            book.restore(_copy(s) for s in journal)
        before = [_copy(s) for s in book.states()]
        now += delay
        firings = book.tick(now, lambda job_id: jobs.get(job_id) == 0)
        fired = [f.scheduled for f in firings if isinstance(f, Fire)]
        assert len(fired) == len(set(fired))
        for firing in firings:
            _account(firing, every, jobs, accounted)
        for job_id in jobs:
            jobs[job_id] = 1  # finished: the next firing may run
        journal = before if lose_last else [_copy(s) for s in book.states()]
    state = book.states()[0]
    assert state.next_fire is not None
    expected = _times(every, T0 + 1e-6, state.next_fire - 1e-6)
    assert sorted(accounted) == expected, "every fire time accounted for, none invented"
    ran = {firing_id("tick", t) for t, how in accounted.items() if how == "fired"}
    assert ran <= set(jobs), "a fired time's job exists, once (ids are unique keys)"


def _account(
    firing: schedules.Firing, every: float, jobs: dict[str, int], accounted: dict[float, str]
) -> None:
    if isinstance(firing, Fire):
        job_id = firing.payload.job_id
        assert job_id == firing_id("tick", firing.scheduled)
        jobs.setdefault(job_id, 0)  # a re-fire of the same time finds the existing job
        accounted[firing.scheduled] = "fired"
    elif isinstance(firing, Skip):
        accounted.setdefault(firing.scheduled, "skipped")
    else:
        times = _times(every, firing.first, firing.last)
        assert len(times) == firing.count
        for t in times:
            accounted.setdefault(t, firing.why)


def _times(every: float, low: float, high: float) -> list[float]:
    """The interval grid's times from ``low`` to ``high`` (both included)."""
    first = math.ceil(low / every - 1e-9)
    last = math.floor(high / every + 1e-9)
    return [round(k * every, 3) for k in range(first, last + 1)]


def _copy(state: ScheduleState) -> ScheduleState:
    return ScheduleState(
        state.spec,
        state.paused,
        state.next_fire,
        state.due,
        state.last_fire,
        state.last_job,
        state.last_outcome,
        list(state.instances),
    )
