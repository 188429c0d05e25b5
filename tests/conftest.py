"""Shared test helpers: the time unit and a real bus on an ephemeral loopback port."""

from __future__ import annotations

import os


def unit() -> float:
    """One test time unit in seconds; slow CI raises ``SCHEDBUS_TEST_UNIT``."""
    return float(os.environ.get("SCHEDBUS_TEST_UNIT", "1.0"))
