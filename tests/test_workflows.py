"""The producer library's workflow helpers: chain and group build one batch."""

from __future__ import annotations

import pytest

from scheduler.producer.workflows import chain, group, job_ids
from scheduler.protocol import JobPayload


def named(job_id: str) -> JobPayload:
    return JobPayload(task="t", job_id=job_id)


def test_a_diamond_is_a_chain_around_a_group() -> None:
    flow = chain(named("a"), group(named("b"), named("c")), named("d"), pass_results=True)
    assert flow.ids == ["a", "b", "c", "d"]
    deps = {job.job_id: job.depends_on for job in flow.jobs}
    assert deps == {"a": None, "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    assert [job.pass_results for job in flow.jobs] == [False, True, True, True]
    assert (flow.heads, flow.tails) == (("a",), ("d",))


def test_jobs_without_ids_get_fresh_idempotent_ones() -> None:
    flow = chain(JobPayload(task="t"), JobPayload(task="t"))
    first, second = flow.jobs
    assert first.job_id and first.on_conflict == "ignore"
    assert second.depends_on == [first.job_id] and not second.pass_results
    assert job_ids(first) is first


def test_a_chain_needs_a_step() -> None:
    with pytest.raises(ValueError, match="at least one step"):
        chain()
