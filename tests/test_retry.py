"""Retry backoff with an injected random generator."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.policy.retry import RetryBackoff


class Fixed(random.Random):
    """A generator whose ``uniform`` always returns the same point of the range."""

    def __init__(self, at: float) -> None:
        super().__init__(0)
        self.at = at

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.at


def test_the_delay_doubles_with_each_retry() -> None:
    backoff = RetryBackoff()
    middle = Fixed(0.5)  # jitter 1.0
    assert [backoff.delay(2.0, n, middle) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert backoff.delay(2.0, 1, Fixed(0.0)) == 1.0  # jitter 0.5
    assert backoff.delay(2.0, 1, Fixed(1.0)) == 3.0  # jitter 1.5


def test_the_delay_is_capped_before_jitter() -> None:
    backoff = RetryBackoff(max_delay=60.0)
    assert backoff.delay(1.0, 100, Fixed(0.5)) == 60.0
    assert backoff.delay(0.0, 5, Fixed(0.5)) == 0.0


@given(
    st.floats(0, 3600), st.integers(1, 100), st.integers(0, 2**32), st.floats(0, 2), st.floats(0, 2)
)
def test_jitter_stays_in_bounds(
    backoff_s: float, retry: int, seed: int, low: float, width: float
) -> None:
    policy = RetryBackoff(jitter_low=low, jitter_high=low + width)
    base = min(backoff_s * 2.0 ** (retry - 1), policy.max_delay)
    delay = policy.delay(backoff_s, retry, random.Random(seed))
    assert base * low <= delay <= base * (low + width) * (1 + 1e-12)


def test_the_same_seed_gives_the_same_schedule() -> None:
    one = [RetryBackoff().delay(1.0, n, random.Random(7)) for n in (1, 2, 3)]
    two = [RetryBackoff().delay(1.0, n, random.Random(7)) for n in (1, 2, 3)]
    assert one == two


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError, match="jitter"):
        RetryBackoff(jitter_low=2.0, jitter_high=1.0)
    with pytest.raises(ValueError, match="from 1"):
        RetryBackoff().delay(1.0, 0, random.Random())
