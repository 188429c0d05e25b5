"""Aging with plain numbers for time."""

from __future__ import annotations

import pytest

from scheduler.policy.aging import Aging


def test_without_a_period_nothing_ages() -> None:
    assert Aging().effective(7, since=0.0, now=1e9) == 7


def test_each_period_of_waiting_is_one_level_more_urgent() -> None:
    aging = Aging(every=10.0)
    levels = [aging.effective(5, since=100.0, now=100.0 + t) for t in (0, 9.99, 10, 25, 49.9)]
    assert levels == [5, 5, 4, 3, 1]


def test_aging_never_goes_past_0() -> None:
    aging = Aging(every=1.0)
    assert aging.effective(3, since=0.0, now=3.0) == 0
    assert aging.effective(3, since=0.0, now=1000.0) == 0
    assert aging.effective(0, since=0.0, now=1000.0) == 0


def test_a_job_not_waiting_yet_does_not_age() -> None:
    assert Aging(every=1.0).effective(6, since=50.0, now=20.0) == 6


@pytest.mark.parametrize("every", [0.0, -1.0])
def test_a_period_must_be_positive(every: float) -> None:
    with pytest.raises(ValueError, match="age_every"):
        Aging(every)
