"""Leases with plain numbers for time."""

from __future__ import annotations

import pytest

from scheduler.policy.lease import Leases


def test_a_lease_expires_duration_after_its_last_renewal() -> None:
    leases = Leases(5.0)
    assert leases.next_deadline() is None
    leases.renew("a", 0.0)
    leases.renew("b", 1.0)
    assert "a" in leases and leases.deadline("a") == 5.0
    leases.renew("a", 3.0)  # a sign of life pushes the deadline back
    assert leases.next_deadline() == 6.0
    assert leases.expired(5.9) == []
    assert leases.expired(6.0) == ["b"]
    assert "b" not in leases and leases.deadline("b") is None
    assert leases.expired(100.0) == ["a"]
    assert leases.next_deadline() is None


def test_renewing_to_the_same_deadline_and_dropping() -> None:
    leases = Leases(1.0)
    leases.renew("a", 2.0)
    leases.renew("a", 2.0)
    leases.renew("b", 2.5)
    leases.drop("a")
    leases.drop("ghost")
    assert leases.next_deadline() == 3.5
    leases.renew("a", 0.0)  # after a drop the same name can hold a lease again
    assert leases.expired(10.0) == ["a", "b"]


def test_a_lease_must_last() -> None:
    with pytest.raises(ValueError, match="more than 0"):
        Leases(0.0)
