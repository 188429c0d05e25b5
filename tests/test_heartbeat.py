"""When a scheduler beats (scheduler.policy.heartbeat), on a fake clock."""

from __future__ import annotations

import pytest

from scheduler.policy.heartbeat import HeartbeatSchedule, heartbeat_interval


@pytest.mark.parametrize(
    ("configured", "lease", "interval"), [(1.0, None, 1.0), (1.0, 6.0, 1.0), (1.0, 1.5, 0.5)]
)
def test_at_least_three_beats_per_lease(
    configured: float, lease: float | None, interval: float
) -> None:
    assert heartbeat_interval(configured, lease) == interval
    assert HeartbeatSchedule(configured, lease).interval_s == interval


def test_the_first_beat_is_due_at_once_then_one_per_interval() -> None:
    schedule = HeartbeatSchedule(1.0, lease_s=0.9)
    assert schedule.due_in(100.0) == 0.0
    schedule.sent(100.0)
    assert schedule.due_in(100.1) == pytest.approx(0.2)
    assert schedule.due_in(100.3) == 0.0
    assert schedule.due_in(105.0) == 0.0  # late: due now, never negative
