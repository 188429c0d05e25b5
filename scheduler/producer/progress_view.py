"""``producer --wait`` on a terminal: a live progress bar of the jobs it follows.

The first line is the bar with final/total jobs, the rate at which jobs end and the time
left; the second counts the jobs that succeeded, ended otherwise, run and wait. A job that
ends other than ``succeeded`` gets a line above the bar with its full id (to paste into
``jobs show``) and its error; log records are printed above the bar too, so nothing tears it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from types import TracebackType

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from scheduler.cli_support import shorten
from scheduler.producer.tally import Tally
from scheduler.producer.tracking import JobRecord


class RateColumn(ProgressColumn):
    """How many jobs end per second, over rich's recent window."""

    def render(self, task: Task) -> Text:
        """``3.2 jobs/s``, or ``- jobs/s`` before two jobs have ended."""
        speed = task.speed
        text = "-" if speed is None else f"{speed:.1f}"
        return Text(f"{text} jobs/s", style="progress.data.speed")


def counts_text(tally: Tally) -> Text:
    """``35 succeeded · 2 failed · 4 running · 59 waiting``, each coloured by its meaning
    (``failed`` counts every final state other than ``succeeded``)."""
    parts = (
        (tally.succeeded, "succeeded", "green"),
        (tally.unsuccessful, "failed", "bold red" if tally.unsuccessful else "dim"),
        (tally.running, "running", "cyan"),
        (tally.waiting, "waiting", "yellow" if tally.waiting else "dim"),
    )
    text = Text("  ")
    for index, (count, label, style) in enumerate(parts):
        if index:
            text.append(" · ", style="dim")
        text.append(f"{count} {label}", style=style)
    if tally.refused:
        text.append(f" · {tally.refused} refused", style="bold red")
    return text


class _JobsProgress(Progress):
    """A :class:`Progress` that shows the counts line under its bar."""

    def __init__(
        self, *columns: ProgressColumn | str, console: Console, get_time: Callable[[], float] | None
    ) -> None:
        self.counts = Text()
        super().__init__(*columns, console=console, expand=True, get_time=get_time)

    def get_renderables(self) -> Iterable[RenderableType]:
        """The bar, then the counts."""
        yield self.make_tasks_table(self.tasks)
        yield self.counts


class _ConsoleLogHandler(logging.Handler):
    """Prints log records through ``console``, so that they appear above a live display."""

    def __init__(self, console: Console, template: logging.Handler) -> None:
        super().__init__(template.level)
        self.console = console
        self.setFormatter(template.formatter)

    def emit(self, record: logging.LogRecord) -> None:
        """Print the formatted record as plain text (no markup, no highlighting)."""
        try:
            self.console.print(Text(self.format(record)), highlight=False, soft_wrap=True)
        except Exception:
            self.handleError(record)


class ProgressView:
    """A :class:`~scheduler.producer.follower.FollowView` drawing a rich progress bar on
    ``console`` while used as a context manager; ``get_time`` is rich's clock (for tests)."""

    def __init__(self, console: Console, get_time: Callable[[], float] | None = None) -> None:
        self.console = console
        self.progress = _JobsProgress(
            SpinnerColumn(),
            TextColumn("[bold]jobs"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TextColumn("•", style="dim"),
            RateColumn(),
            TextColumn("• ETA", style="dim"),
            TimeRemainingColumn(),
            console=console,
            get_time=get_time,
        )
        self.task_id = self.progress.add_task("jobs", total=None)
        self._saved_handlers: list[logging.Handler] = []

    def __enter__(self) -> ProgressView:
        self.progress.start()
        self._route_logs()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()
        logging.getLogger().handlers[:] = self._saved_handlers

    def _route_logs(self) -> None:
        """Send the root logger's records for this terminal through the console."""
        root = logging.getLogger()
        self._saved_handlers = list(root.handlers)
        root.handlers[:] = [
            _ConsoleLogHandler(self.console, handler) if _writes_to_terminal(handler) else handler
            for handler in self._saved_handlers
        ]

    def job_final(self, record: JobRecord) -> None:
        """Print a line above the bar for a job that did not succeed."""
        if record.state == "succeeded":
            return
        line = Text()
        line.append(f"{record.state} ", style="bold red")
        line.append(record.id, style="bold")
        line.append(f" {record.task} on {record.scheduler or '-'}")
        if record.error:
            line.append(f": {shorten(record.error)}")
        self.console.print(line, highlight=False)

    def update(self, tally: Tally) -> None:
        """Move the bar to ``tally``'s figures."""
        self.progress.counts = counts_text(tally)
        self.progress.update(self.task_id, completed=tally.final, total=tally.total)


def _writes_to_terminal(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())
