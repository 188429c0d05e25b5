"""The scheduler's own view of its lease: when it may start a queued job, when it fences."""

from __future__ import annotations

import pytest

from scheduler.policy.fence import LeaseView


def test_without_a_lease_it_always_starts_and_never_fences() -> None:
    view = LeaseView(start_margin=1.0, stop_margin=2.0)
    assert view.may_start(1e9)
    assert view.fence_in(1e9) is None
    view.granted(None, 10.0)
    assert view.may_start(1e9)
    assert view.fence_in(1e9) is None


def test_a_queued_job_starts_only_while_the_lease_surely_holds() -> None:
    view = LeaseView(start_margin=1.0, stop_margin=2.0)
    view.granted(5.0, sent_at=100.0)
    assert view.may_start(103.9)
    assert not view.may_start(104.0)  # frozen past the lease less the margin
    view.confirmed(103.0)  # a heartbeat sent at 103 was ponged
    assert view.may_start(106.9)
    assert not view.may_start(107.0)


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
    view = LeaseView(start_margin=0.5, stop_margin=2.0)
    view.granted(5.0, sent_at=100.0)
    assert view.fence_in(101.0) == 2.0
    assert view.fence_in(104.0) == -1.0
    short = LeaseView(stop_margin=3.0)
    short.granted(1.0, sent_at=0.0)
    assert short.fence_in(0.0) == 0.0  # never before the anchor


def test_a_restart_promise_extends_the_lease_until_a_new_registration() -> None:
    view = LeaseView(start_margin=1.0, stop_margin=2.0)
    view.granted(5.0, sent_at=100.0)
    view.promised(160.0)
    assert view.expires_at() == 160.0
    assert view.may_start(150.0)
    assert view.fence_in(150.0) == 8.0
    view.granted(5.0, sent_at=170.0)
    assert view.keep_until is None
    assert view.expires_at() == 175.0


def test_a_scheduler_cut_off_past_its_lease_must_stop_what_it_holds() -> None:
    view = LeaseView(start_margin=0.1, stop_margin=0.2)
    view.granted(1.0, sent_at=10.0)  # fenced at 10 + 1 - 0.2
    assert view.fence_within(10.0, 5.0, holding=True) == pytest.approx(0.8)
    assert view.fence_within(10.8, 5.0, holding=True) == 0.0
    assert view.fence_within(10.8, 5.0, holding=False) is None  # nothing to stop
    view.confirmed(10.5)  # a ponged heartbeat moves the fence
    assert view.fence_within(11.0, 5.0, holding=True) == pytest.approx(0.3)


def test_a_backoff_wait_is_cut_at_the_fence() -> None:
    view = LeaseView(stop_margin=0.2)
    assert view.fence_within(0.0, 5.0, holding=True) is None  # no lease: never fenced
    view.granted(1.0, sent_at=0.0)
    assert view.fence_within(0.3, 5.0, holding=True) == pytest.approx(0.5)
    assert view.fence_within(0.3, 0.5, holding=True) is None  # the wait ends first
    assert view.fence_within(2.0, 5.0, holding=True) == 0.0  # overdue: at once


def test_a_restarting_bus_s_promise_keeps_jobs_past_the_lease() -> None:
    view = LeaseView(stop_margin=0.2)
    view.granted(0.5, sent_at=0.0)
    view.promised(30.0)  # `restarting` with keep_s=30 received at 0
    assert view.fence_within(2.0, 5.0, holding=True) is None  # 4 leases later
    assert view.fence_within(2.0, 30.0, holding=True) == pytest.approx(27.8)
    view.granted(0.5, sent_at=40.0)  # back: the promise is over
    assert view.fence_within(40.3, 5.0, holding=True) == 0.0
