"""The bench's event tracker: a waiter returns once its predicate holds, or times out
naming what it waited for."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.tracker import Tracker  # noqa: E402
from scheduler.producer.client import ProducerClient  # noqa: E402
from scheduler.protocol import JobEvent  # noqa: E402

pytestmark = pytest.mark.timeout(10)


class FakeClient:
    """Hands the tracker the events a test puts in its queue."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[JobEvent] = asyncio.Queue()

    async def events(self) -> AsyncIterator[JobEvent]:
        while True:
            yield await self.queue.get()


def event(job_id: str, kind: Any, state: Any) -> JobEvent:
    return JobEvent(event=kind, id=job_id, priority=5, state=state, time=0.0)


async def test_a_waiter_wakes_when_its_predicate_holds_and_times_out_naming_what() -> None:
    client = FakeClient()
    async with Tracker(cast(ProducerClient, client)) as tracker:
        finals = asyncio.create_task(tracker.wait(lambda: len(tracker.finals) >= 2, 5, "two"))
        started = asyncio.create_task(tracker.wait_event("a", "started", 5))
        for job_id, kind, state in [
            ("a", "started", "running"),
            ("a", "succeeded", "succeeded"),
            ("b", "failed", "failed"),
        ]:
            await client.queue.put(event(job_id, kind, state))
        assert (await started).event.event == "started"
        await finals
        assert tracker.outcomes(["a", "b", "c"]) == {"succeeded": 1, "failed": 1, "unfinished": 1}
        await tracker.wait(lambda: True, 0.01, "at once")
        with pytest.raises(TimeoutError, match="waiting for the end of c"):
            await tracker.wait_final("c", 0.05)
