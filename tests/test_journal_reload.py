"""Reloading many jobs: what a restarted bus holds per job it takes back."""

from __future__ import annotations

import gc
from contextlib import closing
from pathlib import Path

import pytest

from scheduler.bus.config import BusConfig
from scheduler.bus.garbage import YOUNG_THRESHOLD, collect_less_often, paused_gc
from scheduler.bus.journal import Journal
from scheduler.bus.server import BusServer
from scheduler.policy.job import Job
from scheduler.protocol import JobPayload
from scheduler.protocol_types import JobState


def _job(n: int, holder: str | None) -> Job:
    state: JobState = "running" if holder is not None else "queued"
    return Job(
        id=f"job-{n}",
        payload=JobPayload(priority=5, runtime=1.0),
        seq=n,
        submitted_at=1000.0 + n,
        state=state,
        attempt=1 if holder else 0,
        holder=holder,
        owner="".join(["pro", "ducer"]),
    )


async def test_reloaded_jobs_share_their_state_holder_and_owner_strings(tmp_path: Path) -> None:
    """A restarted bus may take back a million jobs: each must not hold its own copy of
    strings that every job repeats (its state, its scheduler's name, its owner)."""
    path = tmp_path / "journal.db"
    with closing(Journal.open(path)) as journal:
        journal.save([_job(n, "s1" if n % 2 else None) for n in range(6)])
        await journal.flush()
    with closing(Journal.open(path)) as again:
        jobs = again.load()
    assert [job.seq for job in jobs] == list(range(6))
    queued = [job for job in jobs if job.state == "queued"]
    running = [job for job in jobs if job.state == "running"]
    assert len(queued) == 3 and len(running) == 3
    assert len({id(job.state) for job in queued}) == 1
    assert len({id(job.holder) for job in running}) == 1
    assert len({id(job.owner) for job in jobs}) == 1


async def test_reload_keeps_arrival_order_with_queued_writes_on_top(tmp_path: Path) -> None:
    """Writes not yet committed count over the stored rows: a job finished since is left
    out, a job changed since comes back changed, a job new since comes back, all by seq."""
    path = tmp_path / "journal.db"
    with closing(Journal.open(path)) as journal:
        journal.save([_job(n, None) for n in range(4)])
        await journal.flush()
        done = _job(1, None)
        done.state = "succeeded"
        moved = _job(2, "s2")
        journal.save([done, moved, _job(9, None)])
        jobs = journal.load()
    assert [(job.id, job.state) for job in jobs] == [
        ("job-0", "queued"),
        ("job-2", "running"),
        ("job-3", "queued"),
        ("job-9", "queued"),
    ]


async def test_the_bus_reloads_its_journal_with_cyclic_gc_paused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each full collection while a million records are built walks every record built so
    far: the bus takes its jobs back with the cyclic collector paused, and turns it back on."""
    seen: list[bool] = []
    load = Journal.load

    def watched(journal: Journal) -> list[Job]:
        seen.append(gc.isenabled())
        return load(journal)

    monkeypatch.setattr(Journal, "load", watched)
    assert gc.isenabled()
    config = BusConfig(host="127.0.0.1", port=0, db=str(tmp_path / "journal.db"))
    async with BusServer(config):
        assert gc.isenabled()
    assert seen == [False]


def test_paused_gc_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), paused_gc():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_the_bus_collects_the_young_generation_less_often_and_the_older_ones_alike() -> None:
    before = gc.get_threshold()
    try:
        collect_less_often()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.set_threshold(*before)
