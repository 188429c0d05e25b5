"""The agenda spreads its jobs evenly over a window: one in the middle of each equal
slice, moved by seeded jitter within the window, submitted as one batch."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from scheduler.bus.server import BusServer
from scheduler.producer.agenda import Agenda, epoch_of, spread
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobPayload


def test_one_job_in_the_middle_of_each_equal_slice() -> None:
    assert spread(4, 60.0, 1000.0) == [1007.5, 1022.5, 1037.5, 1052.5]
    assert spread(1, 10.0, 0.0) == [5.0]
    assert spread(0, 10.0, 0.0) == []


def test_jitter_is_seeded_bounded_and_kept_in_the_window() -> None:
    times = spread(100, 100.0, 0.0, jitter=2.0, rng=random.Random(7))
    assert times == spread(100, 100.0, 0.0, jitter=2.0, rng=random.Random(7))
    middles = spread(100, 100.0, 0.0)
    assert all(abs(t - m) <= 2.0 for t, m in zip(times, middles, strict=True))
    assert times != middles
    wide = spread(3, 3.0, 0.0, jitter=10.0, rng=random.Random(1))
    assert all(0.0 <= t <= 3.0 for t in wide)


@pytest.mark.parametrize(
    ("count", "over", "jitter", "words"),
    [(-1, 1.0, 0.0, "count must be"), (1, 0.0, 0.0, "over must be"), (1, 1.0, -1.0, "jitter")],
)
def test_bad_arguments_are_named(count: int, over: float, jitter: float, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        spread(count, over, 0.0, jitter)


def test_start_is_epoch_seconds_an_aware_datetime_or_now() -> None:
    assert epoch_of(12.5) == 12.5
    paris = timezone(timedelta(hours=1))
    assert epoch_of(datetime(1970, 1, 1, 1, tzinfo=paris)) == 0.0
    assert epoch_of(None) > 1_600_000_000
    with pytest.raises(ValueError, match="start: a datetime must carry a zone"):
        epoch_of(datetime(2030, 1, 1))


def test_planned_payloads_get_their_run_at_in_order() -> None:
    agenda = Agenda([JobPayload(task="a")])
    agenda.add(JobPayload(task="b"))
    assert len(agenda) == 2
    planned = agenda.planned(over=10.0, start=datetime(2030, 1, 1, tzinfo=UTC))
    base = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert [(p.task, p.run_at) for p in planned] == [("a", base + 2.5), ("b", base + 7.5)]


def test_a_payload_with_its_own_time_is_refused() -> None:
    with pytest.raises(ValueError, match="delay: an agenda's job gets its time from scatter"):
        Agenda([JobPayload(delay=1.0)])


async def test_scatter_submits_one_batch_of_scheduled_jobs(bus: BusServer) -> None:
    agenda = Agenda([JobPayload(runtime=0.1) for _ in range(3)])
    async with ProducerClient(bus.url) as client:
        results = await agenda.scatter(client, over=3600.0, jitter=1.0, rng=random.Random(2))
        ids = [r.id for r in results if r.id is not None]
        assert len(ids) == 3
        watching = await client.watch(ids)
    assert [e.state for e in watching.jobs] == ["scheduled"] * 3
