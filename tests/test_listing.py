"""Which jobs a ``list_jobs`` request names (pure), and the journal's indexed query for
its final ones, queued writes included."""

from __future__ import annotations

import pytest
from conftest import sqlite_store

from scheduler.bus.journal import MEMORY, Journal
from scheduler.bus.journal_schema import find_statement
from scheduler.bus.listing_sql import after_prefix
from scheduler.policy.job import Job
from scheduler.policy.listing import JobQuery, pick
from scheduler.protocol import JobPayload
from scheduler.protocol_queries import ListJobs
from scheduler.protocol_types import FINAL_EVENTS, JobState


def record(job_id: str, seq: int, state: JobState = "failed", **more: object) -> Job:
    task = str(more.pop("task", "sleep"))
    payload = JobPayload(priority=5, runtime=1.0, task=task)
    return Job(job_id, payload, seq, 1000.0 + seq, state=state, **more)  # type: ignore[arg-type]


def test_a_query_keeps_every_condition_it_is_given() -> None:
    request = ListJobs(states=["failed"], task="add", since=1005.0, prefix="ab")
    query = JobQuery.of(request, "alice")
    good = record("abc", 5, task="add", owner="alice")
    assert query.matches(good)
    assert not query.matches(record("abc", 5, "dead", task="add", owner="alice"))
    assert not query.matches(record("abc", 5, task="mul", owner="alice"))
    assert not query.matches(record("abc", 4, task="add", owner="alice"))
    assert not query.matches(record("xbc", 5, task="add", owner="alice"))
    assert not query.matches(record("abc", 5, task="add", owner="bob"))
    assert JobQuery.of(ListJobs(), None).matches(record("anything", 0, "queued"))


def test_within_narrows_the_states_or_says_none_are_wanted() -> None:
    assert JobQuery().within(FINAL_EVENTS) == JobQuery(states=frozenset(FINAL_EVENTS))
    assert JobQuery(states=frozenset({"queued", "dead"})).within(FINAL_EVENTS) == JobQuery(
        states=frozenset({"dead"})
    )
    assert JobQuery(states=frozenset({"queued"})).within(FINAL_EVENTS) is None


def test_pick_merges_newest_first_leaves_out_tracked_records_and_says_more() -> None:
    live = [record("l1", 1, "queued"), record("l5", 5, "running")]
    stored = [record("s4", 4), record("s3", 3), record("l1", 0)]
    tracked = {"l1", "l5"}.__contains__
    jobs, more = pick(live, stored, tracked, 3, newest_first=True)
    assert ([j.id for j in jobs], more) == (["l5", "s4", "s3"], True)
    jobs, more = pick(live, stored, tracked, 4, newest_first=False)
    assert ([j.id for j in jobs], more) == (["l1", "s3", "s4", "l5"], False)


@pytest.mark.parametrize(
    ("prefix", "upper"),
    [("ab", "ac"), ("a\U0010ffff", "b"), ("\U0010ffff", None), ("a\ud7ff", "a\ue000")],
)
def test_the_prefix_range_ends_just_past_every_id_with_the_prefix(
    prefix: str, upper: str | None
) -> None:
    assert after_prefix(prefix) == upper


async def test_find_reads_one_page_of_the_journal_with_its_queued_writes() -> None:
    journal = Journal.open(MEMORY)
    try:
        journal.save(
            [record(f"ab{n}", n, task="add" if n % 2 else "sleep") for n in range(6)]
            + [record("zz", 6), record("q", 7, "queued")]
        )
        await journal.flush()
        failed = JobQuery(states=frozenset({"failed"}))
        assert [j.id for j in journal.find(failed, 3, newest_first=True)] == ["zz", "ab5", "ab4"]
        assert [j.id for j in journal.find(failed, 2)] == ["ab0", "ab1"]
        add = JobQuery(task="add", prefix="ab", since=1002.0)
        assert [j.id for j in journal.find(add, 10)] == ["ab3", "ab5"]
        sleep = JobQuery(task="sleep", prefix="ab")
        assert [j.id for j in journal.find(sleep, 10)] == ["ab0", "ab2", "ab4"]
        # Queued writes: ab5 retried (queued now), ab4 deleted, a new failed job.
        journal.save([record("ab5", 9, "queued"), record("ab9", 8)])
        journal.delete(["ab4"])
        assert [j.id for j in journal.find(failed, 3, newest_first=True)] == ["ab9", "zz", "ab3"]
        mine = JobQuery(owner="alice")
        assert journal.find(mine, 10) == []
    finally:
        journal.close()


def test_a_retried_job_keeps_its_place_by_submit_time_not_its_new_seq() -> None:
    retried = record("r", 9, "queued")
    retried.submitted_at = 1000.5
    jobs, _ = pick(
        [retried], [record("s3", 3), record("s0", 0)], lambda _: False, 5, newest_first=True
    )
    assert [j.id for j in jobs] == ["s3", "r", "s0"]


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (JobQuery(states=frozenset(FINAL_EVENTS), prefix="ab12"), "sqlite_autoindex_jobs_1"),
        (JobQuery(states=frozenset(FINAL_EVENTS)), "jobs_submitted"),
        (JobQuery(states=frozenset({"failed"}), task="add"), "jobs_submitted"),
        (JobQuery(since=5.0), "jobs_submitted"),
    ],
)
def test_the_journal_reads_a_page_through_an_index_without_sorting_every_job(
    query: JobQuery, index: str
) -> None:
    journal = Journal.open(MEMORY)
    try:
        statement, params = find_statement(query, 51, newest_first=True)
        conn = sqlite_store(journal).conn
        plan = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", params))
        assert f"USING INDEX {index}" in plan, plan
        assert "jobs_state_finished" not in plan
    finally:
        journal.close()
