"""The election's pure rules (scheduler.policy.leadership): no database, no sockets."""

from __future__ import annotations

import pytest

from scheduler.bus.config import BusConfig
from scheduler.policy.leadership import EXIT_FENCED, Leadership, StepDown

ME = "ws://10.0.0.1:8101"
OTHER = "ws://10.0.0.2:8101"


def test_a_standby_tries_at_once_then_every_retry_interval() -> None:
    rules = Leadership(ME, retry_s=0.5)
    assert rules.next_try() == 0.0
    assert rules.tried(False, OTHER, 10.0) is False
    assert rules.next_try() == 10.5
    assert rules.leader == OTHER
    assert rules.next_check() is None


def test_a_lost_try_without_a_known_holder_keeps_the_last_leader_seen() -> None:
    rules = Leadership(ME)
    rules.tried(False, OTHER, 1.0)
    rules.tried(False, None, 2.0)
    assert rules.leader == OTHER


def test_a_won_try_elects_and_the_leader_checks_its_lock() -> None:
    rules = Leadership(ME, check_s=0.25)
    assert rules.tried(True, OTHER, 3.0) is True
    rules.elected(7, 3.0)
    assert (rules.role, rules.epoch, rules.leader) == ("leader", 7, ME)
    assert rules.next_try() is None
    assert rules.next_check() == 3.25
    assert rules.tried(True, ME, 4.0) is False


def test_election_needs_a_standby_and_a_growing_epoch() -> None:
    rules = Leadership(ME)
    rules.elected(2, 0.0)
    with pytest.raises(ValueError, match="elected while leader"):
        rules.elected(3, 1.0)
    stale = Leadership(ME, epoch=5)
    with pytest.raises(ValueError, match="epoch 5 does not follow 5"):
        stale.elected(5, 0.0)


def test_a_good_check_keeps_the_lead() -> None:
    rules = Leadership(ME, check_s=0.5, check_timeout_s=1.0)
    rules.elected(1, 0.0)
    assert rules.checked(True, 0.01, 0.6) is None
    assert rules.next_check() == pytest.approx(1.1)


@pytest.mark.parametrize(("ok", "took"), [(False, 0.01), (True, 1.5)])
def test_a_failed_or_slow_check_steps_down(ok: bool, took: float) -> None:
    rules = Leadership(ME, check_timeout_s=1.0)
    rules.elected(1, 0.0)
    decision = rules.checked(ok, took, 2.0)
    assert decision == StepDown("check_failed", decision.reason if decision else "")
    assert decision is not None and decision.exit_code == EXIT_FENCED
    assert rules.role == "fenced"
    assert rules.next_check() is None and rules.next_try() is None


@pytest.mark.parametrize(
    ("cause", "words"),
    [("lock_lost", "session"), ("store_fenced", "newer epoch"), ("check_failed", "check")],
)
def test_every_loss_fences_and_says_why(cause: str, words: str) -> None:
    rules = Leadership(ME)
    rules.elected(1, 0.0)
    decision = rules.lost(cause)  # type: ignore[arg-type]
    assert decision.cause == cause and words in decision.reason and ME in decision.reason
    assert rules.role == "fenced"


def test_a_standby_names_the_leader_it_saw_never_itself() -> None:
    rules = Leadership(ME)
    assert rules.named_leader() is None
    assert "knows no leader yet" in rules.refusal()
    assert rules.health() == {"ok": True, "role": "standby", "leader": None}
    rules.tried(False, ME, 0.0)
    assert rules.named_leader() is None
    rules.tried(False, OTHER, 1.0)
    assert rules.refusal() == f"{ME} is a standby; the leader is {OTHER}"
    assert rules.health() == {"ok": True, "role": "standby", "leader": OTHER}


def test_a_fenced_bus_says_it_no_longer_leads() -> None:
    rules = Leadership(ME)
    rules.elected(1, 0.0)
    rules.lost("lock_lost")
    assert "no longer the leader" in rules.refusal()
    assert rules.health()["ok"] is False


@pytest.mark.parametrize("name", ["retry_s", "check_s", "check_timeout_s"])
def test_intervals_must_be_positive(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} must be > 0 s"):
        Leadership(ME, **{name: 0.0})  # type: ignore[arg-type]


def test_a_lease_is_stale_once_older_than_the_lease_period() -> None:
    rules = Leadership(ME, lease_s=3.0)
    assert rules.lease_stale(None) is False
    assert rules.lease_stale(3.0) is False
    assert rules.lease_stale(3.01) is True


def test_a_standby_deposes_a_stale_holder_once_per_lease_period() -> None:
    rules = Leadership(ME, lease_s=2.0)
    assert rules.should_depose(False, 1.0, 10.0) is False
    assert rules.should_depose(False, None, 10.0) is False
    assert rules.should_depose(True, 5.0, 10.0) is False
    assert rules.should_depose(False, 2.5, 10.0) is True
    assert rules.should_depose(False, 3.0, 11.0) is False
    assert rules.should_depose(False, 4.5, 12.0) is True


def test_a_leader_or_fenced_bus_never_deposes() -> None:
    rules = Leadership(ME, lease_s=2.0)
    rules.elected(1, 0.0)
    assert rules.should_depose(False, 9.0, 1.0) is False
    rules.lost("deposed")
    assert rules.should_depose(False, 9.0, 2.0) is False


def test_a_deposed_leader_says_another_took_the_lead() -> None:
    rules = Leadership(ME)
    rules.elected(1, 0.0)
    decision = rules.lost("deposed")
    assert "another bus took the lead" in decision.reason and rules.role == "fenced"


@pytest.mark.parametrize("lease_s", [0.0, 1.5, -3.0])
def test_a_lease_a_live_leader_could_not_keep_is_refused(lease_s: float) -> None:
    with pytest.raises(ValueError, match="lease_s must be more than 1.5 s"):
        Leadership(ME, check_s=0.5, check_timeout_s=1.0, lease_s=lease_s)


def test_the_bus_config_names_the_leader_lease_field() -> None:
    with pytest.raises(ValueError, match="leader_lease must be more than 1.5 s .* not 1"):
        BusConfig(leader_lease=1.0)


def test_a_bus_that_deposed_a_frozen_leader_promises_the_held_jobs_a_while() -> None:
    rules = Leadership(ME, lease_s=2.0, takeover_hold_s=20.0)
    assert rules.takeover_promise(1000.0, 0.5) is None
    assert rules.should_depose(False, 2.5, 10.0) is True
    assert rules.takeover_promise(1000.0, 0.5) == 1020.0


def test_a_bus_that_wins_after_another_deposed_a_frozen_leader_promises_too() -> None:
    # Three buses: B deposes the frozen leader, C's try takes the lock first and finds
    # the frozen leader's lease still run out (the bump renews it).
    rules = Leadership(ME, lease_s=2.0, takeover_hold_s=20.0)
    assert rules.takeover_promise(1000.0, 2.5) == 1020.0
    assert rules.takeover_promise(1000.0, None) is None
