"""The scheduler's own view of its lease: when it may start a queued job, when it fences."""

from __future__ import annotations

import pytest

from scheduler.policy.fence import LeaseView


def test_without_a_lease_it_always_starts_and_never_fences() -> None:
    view = LeaseView(stop_margin=2.0)
    assert view.may_start(1e9)
    assert view.fence_in(1e9) is None
    assert view.margin() == 0.0
    view.granted(None, 10.0)
    assert view.may_start(1e9)
    assert view.fence_in(1e9) is None
    assert not view.fence_due(1e9, holding=True)
    assert view.recheck_in(1e9) is None  # until a registration grants a lease


def test_a_queued_job_starts_only_before_the_fence() -> None:
    view = LeaseView(stop_margin=2.0)
    view.granted(5.0, sent_at=100.0)  # fence at 100 + 5 - 2
    assert view.may_start(102.9)
    assert not view.may_start(103.0)  # frozen or cut off past the fence
    view.confirmed(103.0)  # a heartbeat sent at 103 was ponged
    assert view.may_start(105.9)
    assert not view.may_start(106.0)


def test_an_older_confirmation_does_not_move_the_anchor_back() -> None:
    view = LeaseView()
    view.confirmed(50.0)  # before any registration: nothing to renew
    assert view.anchor is None
    view.granted(5.0, sent_at=100.0)
    view.confirmed(99.0)
    assert view.anchor == 100.0
    view.granted(5.0, sent_at=98.0)
    assert view.anchor == 100.0


def test_fence_falls_the_stop_margin_before_the_lease_ends() -> None:
    view = LeaseView(stop_margin=2.0)
    view.granted(5.0, sent_at=100.0)
    assert view.fence_in(101.0) == 2.0
    assert view.fence_in(104.0) == -1.0


def test_the_margin_leaves_two_heartbeats_after_the_anchor() -> None:
    # The defaults: 2 s grace + 1 s heartbeat against a 5 s lease fit as they are.
    view = LeaseView(stop_margin=3.0, heartbeat_s=1.0)
    view.granted(5.0, sent_at=0.0)
    assert view.margin() == 3.0
    view.granted(4.0, sent_at=0.0)
    assert view.margin() == 2.0  # two 1 s beats, then the fence
    view.granted(1.0, sent_at=0.0)  # beats every third of the lease
    assert view.margin() == pytest.approx(1 / 3)
    assert view.fence_in(0.0) == pytest.approx(2 / 3)  # never at the anchor itself


def test_the_fence_stops_what_a_scheduler_holds_whether_connected_or_not() -> None:
    view = LeaseView(stop_margin=0.2, heartbeat_s=0.1)
    view.granted(1.0, sent_at=10.0)  # fenced at 10 + 1 - 0.2
    assert not view.fence_due(10.79, holding=True)
    assert view.recheck_in(10.0) == pytest.approx(0.8)
    assert view.fence_due(10.8, holding=True)
    assert not view.fence_due(10.8, holding=False)  # nothing to stop
    view.confirmed(10.5)  # a ponged heartbeat (a slow bus) moves the fence
    assert not view.fence_due(10.8, holding=True)
    assert view.recheck_in(11.0) == pytest.approx(0.3)


def test_past_the_fence_it_looks_again_every_heartbeat() -> None:
    view = LeaseView(stop_margin=0.2, heartbeat_s=1.0)
    view.granted(0.6, sent_at=0.0)  # beats every 0.2 s
    assert view.recheck_in(5.0) == pytest.approx(0.2)


def test_a_restarting_bus_s_promise_keeps_jobs_past_the_lease() -> None:
    view = LeaseView(stop_margin=0.2, heartbeat_s=0.1)
    view.granted(0.5, sent_at=0.0)
    view.promised(30.0)  # `restarting` with keep_s=30 received at 0
    assert view.expires_at() == 30.0
    assert not view.fence_due(2.0, holding=True)  # 4 leases later
    assert view.may_start(2.0)
    assert view.recheck_in(2.0) == pytest.approx(27.8)
    assert view.fence_due(29.8, holding=True)
    view.granted(0.5, sent_at=40.0)  # back: the promise is over
    assert view.keep_until is None
    assert view.expires_at() == 40.5
    assert view.fence_due(40.3, holding=True)
