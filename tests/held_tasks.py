"""Task module for the held-assignment tests: a task whose run leaves a mark on disk."""

from __future__ import annotations

import time
from pathlib import Path

from scheduler.tasks import task


@task
def mark(path: str, runtime: float) -> str:
    """Write ``path`` (the proof that the task ran), then sleep ``runtime`` seconds."""
    Path(path).write_text("ran")
    time.sleep(runtime)
    return "done"
