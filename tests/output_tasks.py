"""Tasks that write output and report progress, for the per-job log and progress tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from scheduler.tasks import progress, task


@task
def chatty(marker: str) -> dict[str, bool]:
    """Write ``marker`` lines through print (stdout and stderr), a raw write to
    descriptor 1 (as C code would) and a subprocess; return whether ``sys.stdout`` is
    line-buffered (so that print() lines reach the log as they are written)."""
    print(f"{marker} print stdout")
    print(f"{marker} print stderr", file=sys.stderr)
    sys.stdout.flush()
    os.write(1, f"{marker} raw fd 1\n".encode())
    subprocess.run(["echo", f"{marker} subprocess"], check=True)
    return {"line_buffered": bool(sys.stdout.line_buffering)}


@task
def loud(kib: int) -> None:
    """Write ``kib`` KiB of numbered lines, the last one ``the end``."""
    for n in range(kib * 16):
        print(f"line {n:06d} {'x' * 52}")
    print("the end")


@task
def stepper(steps: int, go_file: str) -> None:
    """Report progress at each of ``steps`` steps, printing a line at each; between the
    first step and the rest, wait until ``go_file`` exists (the test says when)."""
    for step in range(1, steps + 1):
        print(f"step {step}")  # no flush: the worker makes job stdout line-buffered
        progress(step / steps, f"step {step} of {steps}")
        while step == 1 and not Path(go_file).exists():
            time.sleep(0.01)


@task
def burst(count: int) -> None:
    """Report progress ``count`` times as fast as it can (the last is 1.0, ``last``)."""
    for n in range(1, count):
        progress(n / count, f"n={n}")
    progress(1.0, "last")


@task
def bad_progress(fraction: float, message: str) -> None:
    """Report progress with the given arguments (the test gives bad ones)."""
    progress(fraction, message)


@task
def after_go(go_file: str, text: str) -> None:
    """Wait until ``go_file`` exists, print ``text``, then run until stopped."""
    while not Path(go_file).exists():
        time.sleep(0.01)
    print(text)
    time.sleep(3600)
