"""Tasks for the random-state tests: numpy's global generator, imported before any fork,
as a task module that imports ``numpy.random`` at its top has it."""

from __future__ import annotations

import random
import time

import numpy.random

from scheduler.tasks import task


@task
def draw(hold_s: float = 0.0) -> list[int]:
    """A draw from numpy's global generator and one from Python's :mod:`random`, after
    holding the slot ``hold_s`` seconds (so that concurrent jobs take distinct slots)."""
    time.sleep(hold_s)
    return [int(numpy.random.randint(0, 2**62)), random.getrandbits(62)]
