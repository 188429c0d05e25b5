"""How ``python -m scheduler.jobs`` prints jobs: a table that fits the terminal, the
whole story of one job, or one JSON object per job."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Final

import click
import msgspec
from rich.console import Console
from rich.table import Table

from scheduler.cli_support import shorten
from scheduler.ids import short_id
from scheduler.protocol import JobEvent

STATE_STYLES: Final = {
    "succeeded": "green",
    "failed": "red",
    "dead": "red",
    "timed_out": "red",
    "running": "cyan",
    "assigned": "cyan",
    "cancelled": "yellow",
    "expired": "yellow",
    "skipped": "yellow",
}


def event_json(event: JobEvent) -> str:
    """One JSON object with every field of ``event`` (as ``jobs --json`` prints it)."""
    return json.dumps(msgspec.structs.asdict(event))


def local_time(epoch: float | None) -> str:
    """``epoch`` as ISO 8601 in the local zone, to the second; ``-`` for None."""
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def _when(epoch: float | None, now: datetime) -> str:
    """A short local time for a table cell: the time of day if it is today."""
    if epoch is None:
        return "-"
    when = datetime.fromtimestamp(epoch)
    return when.strftime("%H:%M:%S" if when.date() == now.date() else "%m-%d %H:%M")


_COLUMNS: Final = ("ID", "STATE", "TASK", "PRI", "ATT", "SUBMITTED", "SCHEDULER", "NOTE")
_RIGHT: Final = frozenset({"PRI", "ATT"})
_CAPS: Final = {"TASK": 24, "SCHEDULER": 20}
_DROPPED_FIRST: Final = ("SCHEDULER", "PRI", "ATT", "NOTE", "SUBMITTED", "TASK")
"""The columns a narrow terminal loses, in order."""
_GAP: Final = 2
_MIN_NOTE: Final = 12
_WANT_NOTE: Final = 32


def jobs_table(jobs: list[JobEvent], console: Console) -> None:
    """Print ``jobs`` as a table that fits ``console``'s width, one line per job: the
    id (a prefix ``jobs`` accepts, or the whole id) and the state are always whole; the
    note (error, due time) takes what is left, and columns are left out when even
    that does not fit."""
    now = datetime.now()
    rows = [_row(event, now) for event in jobs]
    widths = {
        name: min(_CAPS.get(name, 10**6), max(len(name), *(len(r[i]) for r in rows)))
        for i, name in enumerate(_COLUMNS)
    }
    kept = _fit(widths, console.width)
    table = Table(box=None, pad_edge=False, header_style="bold", padding=(0, _GAP // 2))
    for name in kept:
        right = name in _RIGHT
        table.add_column(
            name, justify="right" if right else "left", no_wrap=True, width=widths[name]
        )
    for event, row in zip(jobs, rows, strict=True):
        cells = dict(zip(_COLUMNS, row, strict=True))
        style = STATE_STYLES.get(event.state)
        cells["STATE"] = f"[{style}]{event.state}[/]" if style else event.state
        table.add_row(*(cells[name] for name in kept))
    console.print(table)


def _fit(widths: dict[str, int], width: int) -> list[str]:
    """The columns that fit in ``width``. First the note is given up to
    :data:`_WANT_NOTE` characters, leaving out the scheduler, priority and attempt
    columns if it must; where even that does not fit, the note counts as
    :data:`_MIN_NOTE` wide and goes in its turn. The note then takes the room left (up
    to its own width)."""
    kept: list[str] = []
    for note, dropping in (
        (min(widths["NOTE"], _WANT_NOTE), _DROPPED_FIRST[:3]),
        (min(widths["NOTE"], _MIN_NOTE), _DROPPED_FIRST),
    ):
        need = dict(widths, NOTE=note)
        kept, spare = _keep(need, width, dropping, has_note=widths["NOTE"] > len("NOTE"))
        if spare >= 0:
            break
    if "NOTE" in kept:
        widths["NOTE"] = min(widths["NOTE"], need["NOTE"] + max(0, spare))
    return kept


def _keep(
    need: dict[str, int], width: int, dropping: tuple[str, ...], *, has_note: bool
) -> tuple[list[str], int]:
    """The columns kept when those in ``dropping`` are left out in turn until the rest
    fit in ``width``, and the room to spare (negative: they still do not fit)."""
    kept = [name for name in _COLUMNS if name != "NOTE" or has_note]
    left = [name for name in dropping if name in kept]

    def spare() -> int:
        return width - sum(need[name] for name in kept) - _GAP * (len(kept) - 1)

    while spare() < 0 and left:
        kept.remove(left.pop(0))
    return kept, spare()


def _row(event: JobEvent, now: datetime) -> tuple[str, ...]:
    """The plain text of each column of ``event``'s row, in :data:`_COLUMNS` order."""
    return (
        short_id(event.id),
        event.state,
        _cut(event.task, _CAPS["TASK"]),
        str(event.priority),
        str(event.attempt),
        _when(event.submitted_at, now),
        _cut(event.scheduler or "-", _CAPS["SCHEDULER"]),
        _note(event),
    )


def _cut(text: str, width: int) -> str:
    """``text``, ending in ``…`` if it is longer than ``width``."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _note(event: JobEvent) -> str:
    """The one thing to know about a job in a table row: its error (first line), when a
    scheduled job is due, or when a retry runs."""
    if event.error:
        return event.error.splitlines()[0]
    if event.run_at is not None:
        return f"runs at {local_time(event.run_at)}"
    if event.retry_in_s is not None:
        return f"retry in {event.retry_in_s:.0f} s"
    return ""


def job_text(event: JobEvent) -> str:
    """Everything the bus says about one job, as indented text; the traceback whole."""
    lines = [f"job {event.id}"]
    lines.extend(f"  {name:<10} {value}" for name, value in _fields(event))
    history = event.errors or []
    if len(history) > 1 or (history and history[-1] != event.error):
        lines.append("  errors of every failed attempt:")
        lines.extend(f"    {number}. {error}" for number, error in enumerate(history, 1))
    if event.traceback:
        lines.append("  traceback:")
        lines.extend(f"    {line}" for line in event.traceback.rstrip("\n").splitlines())
    return "\n".join(lines)


def _fields(event: JobEvent) -> list[tuple[str, object]]:
    """The one-line facts about a job, by name; those it does not have left out. The
    start is the latest attempt's, shown while it runs and once the job has ended."""
    state = event.state if event.event == event.state else f"{event.state} ({event.event})"
    fields: list[tuple[str, object | None]] = [
        ("state", state),
        ("task", event.task),
        ("args", "-" if event.args is None else json.dumps(event.args)),
        ("priority", event.priority),
        ("submitted", local_time(event.submitted_at)),
        ("started", local_time(event.started_at) if _ran(event) else None),
        ("finished", local_time(event.finished_at)),
        ("attempts", event.attempt),
        ("evictions", event.evictions),
        ("scheduler", event.scheduler or "-"),
    ]
    optional: list[tuple[str, object | None]] = [
        ("run at", None if event.run_at is None else local_time(event.run_at)),
        ("retry in", None if event.retry_in_s is None else f"{event.retry_in_s:.1f} s"),
        ("progress", progress_text(event) or None),
        ("exit code", event.exit_code),
        ("result", None if event.result is None else shorten(json.dumps(event.result))),
        ("error", event.error or None),
    ]
    return [(name, value) for name, value in fields + optional if value is not None]


def progress_text(event: JobEvent) -> str:
    """``40% "message"`` for a job status that carries progress, else ``""``."""
    if event.progress is None:
        return ""
    message = f" {json.dumps(event.message)}" if event.message else ""
    return f"{round(100 * event.progress)}%{message}"


def _ran(event: JobEvent) -> bool:
    """Whether ``event``'s start time belongs to its current state (running or ended)."""
    return event.started_at is not None and (
        event.state == "running" or event.finished_at is not None
    )


def echo_jobs(jobs: list[JobEvent], as_json: bool) -> None:
    """Print each job's whole story (blank lines between), or one JSON object each."""
    for number, event in enumerate(jobs):
        if as_json:
            click.echo(event_json(event))
        else:
            click.echo(("\n" if number else "") + job_text(event))
