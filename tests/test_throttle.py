"""The progress rate limit: at most one value per key per interval, the latest held one
wins, and a key's held value is handed over when it ends. Time is a plain number."""

from __future__ import annotations

import pytest

from scheduler.policy.throttle import ReportThrottle


def test_the_first_value_goes_at_once_and_one_too_soon_is_held() -> None:
    throttle: ReportThrottle[str, float] = ReportThrottle(0.5)
    assert throttle.offer("j", 0.1, now=10.0) == 0.1
    assert throttle.offer("j", 0.2, now=10.1) is None
    assert throttle.offer("j", 0.3, now=10.2) is None, "held in place of 0.2"
    assert throttle.next_due() == 10.5
    assert throttle.take_due(10.4) == []
    assert throttle.take_due(10.5) == [("j", 0.3)]
    assert throttle.next_due() is None
    assert throttle.offer("j", 0.4, now=10.6) is None, "counted as sent at 10.5"
    assert throttle.offer("j", 0.5, now=11.0) == 0.5, "an offer in time sends at once"
    assert throttle.next_due() is None, "and drops what was held"


def test_keys_are_limited_each_on_its_own() -> None:
    throttle: ReportThrottle[str, str] = ReportThrottle(1.0)
    assert throttle.offer("a", "a1", 0.0) == "a1"
    assert throttle.offer("b", "b1", 0.5) == "b1"
    assert throttle.offer("a", "a2", 0.6) is None
    assert throttle.offer("b", "b2", 0.7) is None
    assert throttle.next_due() == 1.0
    assert throttle.take_due(1.2) == [("a", "a2")]
    assert throttle.take_due(1.5) == [("b", "b2")]


def test_flush_hands_over_the_held_value_and_forgets_the_key() -> None:
    throttle: ReportThrottle[str, int] = ReportThrottle(0.5)
    throttle.offer("j", 1, 0.0)
    throttle.offer("j", 2, 0.1)
    assert throttle.flush("j") == 2
    assert throttle.next_due() is None
    assert throttle.flush("j") is None
    assert throttle.offer("j", 3, 0.2) == 3, "a forgotten key starts afresh"


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval must be >= 0, not -1"):
        ReportThrottle(-1)
