"""The slot process's reading of its own memory figures (``scheduler.worker.warm_slot``)."""

from __future__ import annotations

from scheduler.worker.warm_slot import _field_kb, _memory

STATUS = b"Name:\tpython\nVmPeak:\t  20000 kB\nVmHWM:\t   17540 kB\nVmRSS:\t   9000 kB"


def test_status_fields_are_read_by_name_and_a_missing_one_is_zero() -> None:
    assert _field_kb(STATUS, b"\nVmHWM:") == 17540
    assert _field_kb(STATUS, b"\nVmRSS:") == 9000  # the last line, with no newline after it
    assert _field_kb(STATUS, b"\nVmSwap:") == 0


def test_this_process_has_a_peak_at_least_its_resident_size() -> None:
    peak, rss = _memory()
    assert peak >= rss > 0
