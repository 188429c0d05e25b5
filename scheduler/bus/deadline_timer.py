"""A one-shot event-loop timer that fires on time, not up to a millisecond late.

asyncio waits for its timers in ``epoll_wait``, whose timeout is whole milliseconds: the
loop rounds every wait up (``selectors.EpollSelector.select``), so a ``call_later`` set
for a moment between two milliseconds fires at the next whole one, up to 1 ms late and
0.5 ms late on average. A delayed job's release and a schedule's firing wait for such a
timer, and that lateness adds to the job's start.

:class:`DeadlineTimer` arms a Linux ``timerfd`` (``CLOCK_MONOTONIC``, the loop's clock,
to the nanosecond) that the loop watches like a socket: ``epoll_wait`` returns as soon as
the kernel's timer expires. Where the C library has no ``timerfd_create`` (not Linux), it
falls back to ``loop.call_at``. Either way it never fires early: the kernel's timer
expires at or after its time, and ``call_at`` runs a handle only once the loop's clock
has reached it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import math
import os
from collections.abc import Callable
from typing import Final

_CLOCK_MONOTONIC: Final = 1
_TFD_TIMER_ABSTIME: Final = 1


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


def _timerfd_calls() -> tuple[Callable[..., int], Callable[..., int]] | None:
    """libc's ``timerfd_create`` and ``timerfd_settime``, or None where there are none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        create, settime = libc.timerfd_create, libc.timerfd_settime
    except (OSError, AttributeError):
        return None
    create.argtypes = (ctypes.c_int, ctypes.c_int)
    create.restype = ctypes.c_int
    settime.argtypes = (
        ctypes.c_int,
        ctypes.c_int,
        ctypes.POINTER(_Itimerspec),
        ctypes.POINTER(_Itimerspec),
    )
    settime.restype = ctypes.c_int
    return create, settime


_TIMERFD: Final = _timerfd_calls()


def _check(result: int) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


class DeadlineTimer:
    """Calls ``callback`` once at the loop time given to :meth:`set` (monotonic seconds),
    on the running event loop; setting it again moves that time, :meth:`cancel` drops it."""

    def __init__(self, callback: Callable[[], None]) -> None:
        """A timer not set; nothing is opened until the first :meth:`set`."""
        self._callback = callback
        self._when: float | None = None
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def when(self) -> float | None:
        """The loop time it fires at, or None when not set."""
        return self._when

    @property
    def precise(self) -> bool:
        """Whether it waits on a ``timerfd`` (else on a loop timer, rounded up to 1 ms)."""
        return self._fd >= 0

    def set(self, when: float) -> None:
        """Fire at loop time ``when`` (at once if it has passed), replacing any earlier
        setting; nothing once closed. Needs a running event loop."""
        if self._closed:
            return
        self._when = when
        if self._loop is None:
            self._open(asyncio.get_running_loop())
        if self._fd >= 0:
            self._settime(when)
            return
        if self._handle is not None:
            self._handle.cancel()
        assert self._loop is not None
        self._handle = self._loop.call_at(when, self._fire)

    def cancel(self) -> None:
        """Fire nothing until set again."""
        self._when = None
        if self._fd >= 0:
            self._settime(None)
        elif self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        """Cancel it for good and release its descriptor."""
        self.cancel()
        self._closed = True
        if self._fd >= 0:
            assert self._loop is not None
            if not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        self._loop = None

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if _TIMERFD is None:
            return
        create, _ = _TIMERFD
        try:
            fd = _check(create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC))
        except OSError:
            return  # out of descriptors, say: the loop's own timer still fires
        self._fd = fd
        loop.add_reader(fd, self._expired)

    def _settime(self, when: float | None) -> None:
        """Arm the ``timerfd`` for absolute monotonic time ``when`` (None: disarm)."""
        assert _TIMERFD is not None
        value = _Itimerspec()
        if when is not None:
            # An all-zero time would disarm it: a time already past is 1 ns after boot.
            ns = max(1, math.ceil(when * 1e9))
            value.it_value.tv_sec, value.it_value.tv_nsec = divmod(ns, 1_000_000_000)
        _check(_TIMERFD[1](self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(value), None))

    def _expired(self) -> None:
        """The ``timerfd`` is readable: it expired (unless set again meanwhile)."""
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return  # set again or cancelled after it expired: not this setting's time
        self._fire()

    def _fire(self) -> None:
        self._handle = None
        if self._when is None:
            return
        self._when = None
        self._callback()
