from scheduler.policy.waits import WaitTimes, percentiles
from scheduler.protocol_stats import Percentiles


def test_percentiles_use_the_nearest_rank() -> None:
    summary = percentiles([float(n) for n in range(1, 101)])
    assert summary == Percentiles(count=100, p50=50.0, p90=90.0, p99=99.0, max=100.0)


def test_no_samples_give_zeros() -> None:
    assert percentiles([]) == Percentiles(count=0, p50=0.0, p90=0.0, p99=0.0, max=0.0)


def test_waits_are_kept_per_priority_within_the_window() -> None:
    waits = WaitTimes(window=3)
    for seconds in (9.0, 1.0, 2.0, 3.0):
        waits.record(5, seconds)
    waits.record(0, 0.5)
    summary = waits.summary()
    assert list(summary) == ["0", "5"]
    assert summary["5"].count == 3
    assert summary["5"].max == 3.0
    assert summary["0"].p50 == 0.5
