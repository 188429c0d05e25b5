"""An agenda: collect job payloads, then scatter them evenly over a time window as one
``submit_many`` of delayed jobs (each with an absolute ``run_at``).

The window ``[start, start + over)`` is cut into as many equal slices as there are
jobs, and each job is due in the middle of its slice, moved by up to ``jitter``
seconds either way (drawn uniformly, kept inside the window), so N jobs never run at
once but within the window, in the order they were added (ties aside, with jitter).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from datetime import datetime

import msgspec

from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobPayload, SubmitResult


def spread(
    count: int, over: float, start: float, jitter: float = 0.0, rng: random.Random | None = None
) -> list[float]:
    """``count`` times (epoch seconds) spread over ``[start, start + over]``: the middle
    of each of ``count`` equal slices, each moved by a uniform draw in ``[-jitter,
    jitter]`` and kept in the window. Raises ValueError naming a bad argument."""
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    if not over > 0:
        raise ValueError(f"over must be > 0 s, not {over}")
    if not jitter >= 0:
        raise ValueError(f"jitter must be >= 0 s, not {jitter}")
    draw = rng if rng is not None else random.Random()
    width = over / count if count else over
    times = []
    for i in range(count):
        moved = start + width * (i + 0.5) + (draw.uniform(-jitter, jitter) if jitter else 0.0)
        times.append(min(max(moved, start), start + over))
    return times


def epoch_of(start: float | datetime | None) -> float:
    """``start`` as epoch seconds: a number as is, an aware datetime converted, None now.
    Raises ValueError for a naive datetime (it means a different time on every machine)."""
    if start is None:
        return time.time()
    if isinstance(start, datetime):
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("start: a datetime must carry a zone (tzinfo)")
        return start.timestamp()
    return float(start)


class Agenda:
    """Payloads collected to be scattered over a window (see :meth:`scatter`)."""

    def __init__(self, payloads: Sequence[JobPayload] = ()) -> None:
        """An agenda holding ``payloads`` (more with :meth:`add`)."""
        self._payloads: list[JobPayload] = []
        for payload in payloads:
            self.add(payload)

    def add(self, payload: JobPayload) -> None:
        """Add ``payload``; it must not carry a time of its own (``run_at``/``delay``):
        the agenda gives it one. Raises ValueError naming the field."""
        for field in ("run_at", "delay"):
            if getattr(payload, field) is not None:
                raise ValueError(f"{field}: an agenda's job gets its time from scatter")
        self._payloads.append(payload)

    def __len__(self) -> int:
        """How many payloads the agenda holds."""
        return len(self._payloads)

    def planned(
        self,
        *,
        over: float,
        start: float | datetime | None = None,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> list[JobPayload]:
        """The payloads with their ``run_at`` spread over ``over`` seconds from ``start``
        (default: now), as :func:`spread` does; nothing is sent."""
        times = spread(len(self._payloads), over, epoch_of(start), jitter, rng)
        return [
            msgspec.structs.replace(payload, run_at=when)
            for payload, when in zip(self._payloads, times, strict=True)
        ]

    async def scatter(
        self,
        client: ProducerClient,
        *,
        over: float,
        start: float | datetime | None = None,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> list[SubmitResult]:
        """Submit :meth:`planned` as one ``submit_many``; one result per job, in order."""
        return await client.submit_many(
            self.planned(over=over, start=start, jitter=jitter, rng=rng)
        )
