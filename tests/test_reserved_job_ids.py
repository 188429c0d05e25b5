"""``@`` and ``/`` in a job id are the bus's: a client may not choose an id holding
them (the firings of a schedule are ``NAME@TIME``, the runs of a broadcast
``ID/SCHEDULER``, and anyone can compute both), while the ids the bus makes itself
(firings, broadcast runs) keep working."""

from __future__ import annotations

import random

from dispatch_helpers import WALL, add, job, new_core, reply, submit
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.policy.conflict import RESERVED_RULE, Create, Refuse, reserved_problem, resolve
from scheduler.policy.job import Job
from scheduler.policy.schedule_driver import ScheduleDriver
from scheduler.policy.schedules import firing_id, firing_payload
from scheduler.protocol import Accepted, Error, JobPayload, SubmittedMany
from scheduler.protocol_schedules import ScheduleSpec
from scheduler.protocol_types import OnConflict

RULE = (
    "payload.job_id: '@' and '/' are reserved for schedule firings and broadcast runs"
    " (NAME@TIME, ID/SCHEDULER); choose an id without them"
)

plain = st.text(min_size=1, max_size=40).filter(lambda s: "@" not in s and "/" not in s)
reserved = st.builds(
    lambda head, char, tail: head + char + tail,
    st.text(max_size=20),
    st.sampled_from(["@", "/"]),
    st.text(max_size=20),
)
on_conflicts = st.sampled_from(["raise", "ignore", "replace"])


def taken(job_id: str, owner: str | None) -> Job:
    return Job(job_id, JobPayload(runtime=1.0, job_id=job_id), seq=0, submitted_at=0.0, owner=owner)


@settings(max_examples=200, deadline=None)
@given(
    job_id=reserved,
    on_conflict=on_conflicts,
    owner=st.sampled_from([None, "alice"]),
    exists=st.booleans(),
)
def test_a_client_chosen_id_with_at_or_slash_is_refused_whatever_else_holds(
    job_id: str, on_conflict: OnConflict, owner: str | None, exists: bool
) -> None:
    """Free or taken, by the same owner or not, whatever ``on_conflict`` says."""
    payload = JobPayload(runtime=1.0, job_id=job_id, on_conflict=on_conflict)
    existing = taken(job_id, owner) if exists else None
    resolution = resolve(existing, payload, owner, stoppable=True)
    assert isinstance(resolution, Refuse)
    assert resolution.message == RULE.removeprefix("payload.job_id: ")
    assert reserved_problem(job_id) == resolution.message


@settings(max_examples=200, deadline=None)
@given(
    job_id=plain,
    on_conflict=on_conflicts,
    owner=st.sampled_from([None, "alice"]),
    exists=st.booleans(),
)
def test_the_rule_changes_nothing_for_other_ids_nor_for_the_bus(
    job_id: str, on_conflict: OnConflict, owner: str | None, exists: bool
) -> None:
    """An id without ``@`` and ``/`` resolves as it did, and so does any id the bus
    itself submits (``by_bus``)."""
    assert reserved_problem(job_id) is None
    for chosen in (job_id, f"{job_id}@2026-01-01T00:00:00Z", f"{job_id}/node-1"):
        payload = JobPayload(runtime=1.0, job_id=chosen, on_conflict=on_conflict)
        existing = taken(chosen, owner) if exists else None
        by_bus = resolve(existing, payload, owner, stoppable=True, by_bus=True)
        if chosen == job_id:
            assert resolve(existing, payload, owner, stoppable=True) == by_bus
        assert not isinstance(by_bus, Refuse) or RESERVED_RULE not in by_bus.message
    free = JobPayload(runtime=1.0, job_id=job_id, on_conflict=on_conflict)
    assert resolve(None, free, owner, stoppable=False) == Create()


def test_the_core_refuses_a_producers_reserved_id_naming_the_field() -> None:
    core = new_core()
    out = reply(submit(core, job(job_id="tick@2026-11-30T07:38:30Z"), owner="mallory"))
    assert isinstance(out, Error) and out.field == "payload.job_id" and out.message == RULE
    many = reply(
        core.submit_many(
            [job(job_id="ok"), job(job_id="bc/A"), job(job_id="fine")], 0.0, WALL, owner="m"
        )
    )
    assert isinstance(many, SubmittedMany)
    assert [r.id for r in many.results] == ["ok", None, "fine"]
    bad = many.results[1]
    assert bad.field == "jobs.1.job_id"
    assert bad.error == RULE.replace("payload.", "jobs.1.")
    assert not core.tracks("bc/A") and not core.tracks("tick@2026-11-30T07:38:30Z")


def test_firings_and_broadcast_runs_still_get_the_bus_ids() -> None:
    core = new_core()
    add(core, "a", tasks=["noop"])
    add(core, "b", tasks=["noop"])
    out = reply(submit(core, job(job_id="bc", task="noop", broadcast=True)))
    assert isinstance(out, Accepted) and out.runs == ["bc/a", "bc/b"]
    assert core.tracks("bc/a") and core.tracks("bc/b")
    driver = ScheduleDriver(random.Random(1))
    spec = ScheduleSpec(name="tick", task="noop", every=10.0)
    assert driver.declare([spec], ["noop"], WALL).changed == ["tick"]
    due = WALL - WALL % 10 + 10
    step = driver.due(core, 0.0, due, lambda _: None)
    assert step.fired == [firing_id("tick", due)] and not step.refused
    assert core.tracks(firing_id("tick", due))
    # Firing that time again finds the same job: the bus's own id is not refused.
    again = reply(core.submit(firing_payload(spec, due), 0.0, WALL, by_bus=True))
    assert isinstance(again, Accepted) and again.existing
