"""How a job id is shown to people: in full, or a prefix the ``jobs`` commands accept."""

from __future__ import annotations

import re
from typing import Final

SHORT_ID_LEN: Final = 12
"""How many characters of a generated id logs and ``monitor`` print: 48 bits, so that a
prefix stays unique among millions of jobs (``jobs`` refuses an ambiguous one)."""

_GENERATED: Final = re.compile(r"[0-9a-f]{32}")
"""The ids the bus and the producer make: 128 random bits as hex."""


def short_id(job_id: str) -> str:
    """``job_id`` as a log line or ``monitor`` prints it: the first
    :data:`SHORT_ID_LEN` characters of a generated id (a prefix every ``jobs`` command
    accepts), any other id in full (an id someone chose, a broadcast run ``ID/scheduler``)."""
    return job_id[:SHORT_ID_LEN] if _GENERATED.fullmatch(job_id) else job_id
