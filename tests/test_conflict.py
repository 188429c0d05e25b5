"""What a submit with a taken ``job_id`` does."""

from __future__ import annotations

import pytest

from scheduler.policy.conflict import Create, KeepExisting, Refuse, Replace, resolve
from scheduler.policy.job import Job
from scheduler.protocol import JobPayload, JobState, OnConflict


def existing(state: JobState) -> Job:
    return Job("nightly", JobPayload(priority=1, runtime=1.0), seq=0, submitted_at=0.0, state=state)


@pytest.mark.parametrize("how", ["raise", "ignore", "replace"])
def test_a_free_id_is_created(how: OnConflict) -> None:
    assert resolve(None, how, stoppable=False) == Create()


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
def test_raise_and_ignore(state: JobState) -> None:
    assert resolve(existing(state), "raise", stoppable=True) == Refuse(
        f"job nightly already exists (state {state})"
    )
    assert resolve(existing(state), "ignore", stoppable=True) == KeepExisting()


def test_replace_only_what_has_not_started() -> None:
    assert resolve(existing("queued"), "replace", stoppable=False) == Replace(stop_holder=False)
    assert resolve(existing("assigned"), "replace", stoppable=True) == Replace(stop_holder=True)
    cases: list[tuple[JobState, bool, str]] = [
        ("assigned", False, "running"),  # a v1 holder cannot be told to stop
        ("running", True, "running"),
        ("dead", True, "final"),
    ]
    for state, stoppable, why in cases:
        refusal = resolve(existing(state), "replace", stoppable=stoppable)
        assert isinstance(refusal, Refuse)
        assert f"is {why} (state {state})" in refusal.message
