import random

from scheduler.policy.backoff import Backoff


def test_delays_double_up_to_the_cap_with_jitter() -> None:
    backoff = Backoff(base=1.0, cap=4.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(5)]
    ceilings = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))


def test_reset_starts_again_from_base() -> None:
    backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(1))
    for _ in range(4):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 1.0
