"""The schedule driver against a real dispatch core on a virtual clock: declarations,
firings, skips and misses as ``skipped`` events, refusals, a firing of a job the core
forgot (found in the journal's record), triggers, and outcomes."""

from __future__ import annotations

import random
from dataclasses import replace

import msgspec

from scheduler.policy.dispatch.decisions import EmitEvent
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.policy.job import Job
from scheduler.policy.schedule_driver import Declared, ScheduleDriver
from scheduler.policy.schedules import firing_id, firing_payload
from scheduler.protocol_schedules import ScheduleSpec

T0 = 1_800_000_000.0


def spec(**changes: object) -> ScheduleSpec:
    base = ScheduleSpec(name="tick", task="noop", every=10.0)
    return msgspec.structs.replace(base, **changes)


def nothing(job_id: str) -> Job | None:
    return None


def driver_with(*specs: ScheduleSpec) -> ScheduleDriver:
    driver = ScheduleDriver(random.Random(1))
    declared = driver.declare(specs, ["noop", "sleep"], T0)
    assert declared.changed == [s.name for s in specs] and not declared.refused
    return driver


def test_a_declaration_refuses_invalid_schedules_and_tasks_not_served() -> None:
    driver = ScheduleDriver()
    declared = driver.declare(
        [spec(), spec(name="bad", cron="nope", every=None), spec(name="other", task="x")],
        ["noop"],
        T0,
    )
    assert declared.changed == ["tick"]
    assert [name for name, _ in declared.refused] == ["bad", "other"]
    assert declared.refused[0][1].startswith("cron: not a valid cron expression")
    assert declared.refused[1][1] == "task: 'x' is not a task this scheduler serves"
    assert driver.declare([spec()], ["noop"], T0).changed == []  # unchanged: nothing to do
    assert driver.next_deadline() == T0 + 10


def test_a_due_firing_is_submitted_with_its_id_and_the_next_is_planned() -> None:
    core, driver = Dispatcher(), driver_with(spec())
    step = driver.due(core, 5.0, T0 + 10, nothing)
    job_id = firing_id("tick", T0 + 10)
    assert step.fired == [job_id] and not step.refused and not step.skipped
    events = [d.event.event for d in step.decisions if isinstance(d, EmitEvent)]
    assert events == ["accepted"] and core.tracks(job_id)
    assert driver.next_deadline() == T0 + 20


def test_a_firing_not_run_is_a_skipped_event_naming_why() -> None:
    core = Dispatcher()
    driver = driver_with(spec(coalesce=False), spec(name="late", priority=2, max_instances=2))
    driver.due(core, 0.0, T0 + 10, nothing)
    step = driver.due(core, 0.0, T0 + 30, nothing)  # tick's first firing still queued
    by_id = {event.id: event for event in step.skipped}
    skip = by_id[firing_id("tick", T0 + 20)]
    assert skip.event == skip.state == "skipped"
    assert skip.priority == core.task_priority("noop")
    assert skip.error is not None and "1 earlier firings still running" in skip.error
    missed = by_id[firing_id("late", T0 + 20)]
    assert missed.priority == 2
    assert missed.error == (
        "schedule late: 1 firings from 2027-01-15T08:00:20Z to 2027-01-15T08:00:20Z not run"
        " (coalesced: only the latest runs)"
    )
    assert step.fired == [firing_id("late", T0 + 30)]


def test_a_firing_the_core_refuses_is_reported_refused() -> None:
    core, driver = Dispatcher(), driver_with(spec(task="sleep"))  # sleep without a runtime
    step = driver.due(core, 0.0, T0 + 10, nothing)
    assert not step.fired
    assert [job_id for job_id, _ in step.refused] == [firing_id("tick", T0 + 10)]
    assert "runtime" in step.refused[0][1]


def test_a_firing_of_a_job_the_core_forgot_finds_its_journal_record() -> None:
    """A restart restored the book as it was before that firing's tick was journaled:
    firing it again finds the final job, which is not run again."""
    first, driver = Dispatcher(), driver_with(spec())
    saved = [replace(s, instances=list(s.instances)) for s in driver.book.states()]
    step = driver.due(first, 0.0, T0 + 10, nothing)
    record = Job(step.fired[0], firing_payload(spec(), T0 + 10), 0, T0 + 10, state="succeeded")
    again = ScheduleDriver(random.Random(1))
    again.restore(saved)
    core = Dispatcher()
    redo = again.due(core, 0.0, T0 + 10, {record.id: record}.get)
    assert redo.fired == [record.id]
    assert not [d for d in redo.decisions if isinstance(d, EmitEvent)]
    assert not core.tracks(record.id)


def test_a_trigger_fires_now_or_says_why_not() -> None:
    core, driver = Dispatcher(), driver_with(spec())
    message, step = driver.trigger("tick", core, 0.0, T0 + 3, nothing)
    assert message == f"schedule tick triggered: job {firing_id('tick', T0 + 3)}"
    assert step.fired == [firing_id("tick", T0 + 3)]
    message, step = driver.trigger("tick", core, 0.0, T0 + 4, nothing)
    assert message == (
        "schedule tick not triggered: 1 earlier firings still running (max_instances 1)"
    )
    assert len(step.skipped) == 1 and not step.fired


def test_refresh_notes_the_latest_firings_state_from_the_core_or_the_journal() -> None:
    core = Dispatcher()
    driver = driver_with(spec(), spec(name="gone"), spec(name="done"), spec(name="idle"))
    driver.book.pause("idle")
    driver.due(core, 0.0, T0 + 10, nothing)
    done_id = firing_id("done", T0 + 10)
    gone_id = firing_id("gone", T0 + 10)
    core.cancel(done_id, T0 + 11)
    core.cancel(gone_id, T0 + 11)
    assert not core.tracks(done_id)  # the core forgot it: the journal has it
    record = Job(done_id, firing_payload(spec(name="done"), T0 + 10), 0, T0, state="cancelled")
    driver.trigger("tick", core, 0.0, T0 + 12, nothing)  # skipped: outcome stays
    driver.refresh(core, T0 + 12, {done_id: record}.get)
    outcomes = {s.spec.name: s.last_outcome for s in driver.book.states()}
    assert outcomes["tick"].startswith("skipped")  # type: ignore[union-attr]
    assert outcomes["done"] == "cancelled"
    assert outcomes["gone"] == "submitted"  # neither the core nor the journal knows it
    assert outcomes["idle"] is None


def test_a_declaration_never_changes_a_schedule_an_admin_added() -> None:
    driver = ScheduleDriver(random.Random(1))
    nightly = spec(name="nightly", cron="0 3 * * *", every=None, args={"day": "-1"})
    assert driver.book.upsert(nightly, T0)  # the admin's add
    forged = spec(name="nightly", every=1.0, args={"cmd": "anything"}, priority=0)
    declared = driver.declare([forged, spec()], ["noop"], T0)
    assert declared.changed == ["tick"]
    assert declared.refused == [
        (
            "nightly",
            "name: schedule nightly was added by an admin (schedules add); a scheduler's"
            " declaration cannot change it (an admin may remove it)",
        )
    ]
    state = driver.book.get("nightly")
    assert state is not None and state.spec == nightly and state.origin == "added"
    driver.book.take_changes()
    same = driver.declare([nightly], ["noop"], T0)
    assert same == Declared([], []), "declaring the admin's spec as it is changes nothing"
    assert state.origin == "added" and driver.book.take_changes() == ([], [])


def origin(driver: ScheduleDriver, name: str) -> str | None:
    state = driver.book.get(name)
    return None if state is None else state.origin


def test_declared_schedules_follow_declarations_until_an_admin_adds_one() -> None:
    driver = driver_with(spec())
    tick = driver.book.get("tick")
    assert tick is not None and tick.info().origin == origin(driver, "tick") == "declared"
    assert driver.declare([spec(priority=2)], ["noop"], T0).changed == ["tick"]
    assert driver.book.upsert(spec(priority=2), T0), "an admin's add of the same spec takes it"
    assert origin(driver, "tick") == "added"
    assert driver.declare([spec(priority=3)], ["noop"], T0).refused
    driver.book.remove("tick")
    assert driver.declare([spec(priority=3)], ["noop"], T0).changed == ["tick"]
    again = driver.book.get("tick")
    assert again is not None and again.origin == "declared" and again.spec == spec(priority=3)
