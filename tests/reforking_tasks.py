"""A task whose descendant keeps re-forking, for ``tests/test_reforking_chain.py``."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from scheduler.tasks import task


def _write_pid(pidfile: str) -> None:
    """Write this process's pid to ``pidfile`` whole (a rename)."""
    partial = Path(f"{pidfile}.{os.getpid()}")
    partial.write_text(str(os.getpid()))
    partial.rename(pidfile)


def _hop(pidfile: str, hop: float, until: float) -> None:
    """Ignore SIGTERM, then keep forking a successor in a session of its own and exiting,
    so that the chain's live pid and session change every ``hop`` seconds; give up at
    ``until`` (epoch seconds) so that a failing test leaves nothing running for long."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while time.time() < until:
        os.setsid()
        _write_pid(pidfile)
        time.sleep(hop)
        if os.fork() != 0:
            os._exit(0)
    os._exit(0)


@task
def hopper(pidfile: str, hop: float, until: float, die_after: float | None = None) -> None:
    """Start a re-forking chain (see :func:`_hop`) and hang until stopped, or SIGKILL the
    job process itself ``die_after`` seconds after the chain wrote its first pid."""
    if os.fork() == 0:
        _hop(pidfile, hop, until)
    if die_after is None:
        time.sleep(600)
        return
    while not os.path.exists(pidfile):
        time.sleep(0.001)
    time.sleep(die_after)
    os.kill(os.getpid(), signal.SIGKILL)
