"""A task module that sets SIGTERM and SIGINT handlers as it is imported, when
``SCHEDBUS_TEST_HANDLERS_AT_IMPORT`` is set: in a fork server a test starts with it, never
in the test process."""

from __future__ import annotations

import os
import signal
from types import FrameType


def _ignore(signum: int, frame: FrameType | None) -> None:
    """A handler that does nothing."""


if os.environ.get("SCHEDBUS_TEST_HANDLERS_AT_IMPORT"):
    signal.signal(signal.SIGTERM, _ignore)
    signal.signal(signal.SIGINT, _ignore)


def default_handlers() -> list[bool]:
    """Whether SIGTERM and SIGINT have their default handlers in this job process."""
    return [
        signal.getsignal(signum) == signal.SIG_DFL for signum in (signal.SIGTERM, signal.SIGINT)
    ]
