"""What a submit with a taken ``job_id`` does."""

from __future__ import annotations

import pytest

from scheduler.policy.conflict import Create, KeepExisting, Refuse, Replace, resolve
from scheduler.policy.job import Job
from scheduler.protocol import JobPayload
from scheduler.protocol_types import JobState, OnConflict

OLD = JobPayload(priority=1, runtime=1.0, job_id="nightly")


def existing(state: JobState, owner: str | None = "alice") -> Job:
    return Job("nightly", OLD, seq=0, submitted_at=0.0, state=state, owner=owner)


def new(on_conflict: OnConflict, runtime: float = 2.0) -> JobPayload:
    """A submit of id ``nightly``, by default with another payload than the existing job."""
    return JobPayload(priority=1, runtime=runtime, job_id="nightly", on_conflict=on_conflict)


@pytest.mark.parametrize("how", ["raise", "ignore", "replace"])
def test_a_free_id_is_created(how: OnConflict) -> None:
    assert resolve(None, new(how), "alice", stoppable=False) == Create()


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
def test_raise_and_ignore(state: JobState) -> None:
    assert resolve(existing(state), new("raise"), "alice", stoppable=True) == Refuse(
        f"job nightly already exists (state {state})"
    )
    assert resolve(existing(state), new("ignore"), "alice", stoppable=True) == KeepExisting()


def test_replace_only_what_has_not_started() -> None:
    replace = new("replace")
    assert resolve(existing("queued"), replace, "alice", stoppable=False) == Replace(
        stop_holder=False
    )
    assert resolve(existing("assigned"), replace, "alice", stoppable=True) == Replace(
        stop_holder=True
    )
    cases: list[tuple[JobState, bool, str]] = [
        ("assigned", False, "running"),  # a v1 holder cannot be told to stop
        ("running", True, "running"),
        ("dead", True, "final"),
    ]
    for state, stoppable, why in cases:
        refusal = resolve(existing(state), replace, "alice", stoppable=stoppable)
        assert isinstance(refusal, Refuse)
        assert f"is {why} (state {state})" in refusal.message


@pytest.mark.parametrize("how", ["raise", "ignore", "replace"])
@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
def test_a_resend_by_the_owner_gets_the_existing_job(how: OnConflict, state: JobState) -> None:
    assert resolve(existing(state), new(how, runtime=1.0), "alice", stoppable=True) == (
        KeepExisting()
    )


@pytest.mark.parametrize("how", ["raise", "ignore", "replace"])
@pytest.mark.parametrize("owner", ["mallory", None])
def test_another_owner_always_conflicts_and_learns_nothing(
    how: OnConflict, owner: str | None
) -> None:
    for runtime in (1.0, 2.0):  # identical payload or not
        refusal = resolve(existing("queued"), new(how, runtime), owner, stoppable=True)
        assert refusal == Refuse("job id nightly is taken by another submitter; choose another id")
        assert "queued" not in refusal.message
