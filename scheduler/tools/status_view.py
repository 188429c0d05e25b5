"""The ``status`` snapshot laid out for the terminal it is drawn on.

Each table is built for the width rich gives it at render time: every cell is drawn whole
(a column never shows ``…``); when the columns do not all fit, the least useful ones are
left out (the caption names them; ``--json`` has everything), and when even the essential
ones do not fit, each row becomes a small block of ``field value`` lines. The bus's
counters fill as many pairs of columns as fit. Under ``--watch``, the whole snapshot is cut
to the terminal's height and the last line says how many lines are hidden.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from scheduler.policy.schedules import iso_utc
from scheduler.protocol_schedules import Schedules
from scheduler.protocol_stats import BusStats, SchedulerStats, StatsReply

BUS_COUNTERS = (
    "submitted", "started", "succeeded", "failed", "timed_out", "evicted", "requeued",
    "retried", "cancelled", "dead", "stolen", "steal_attempts", "not_started", "queued",
    "running", "scheduled", "expired",
)  # fmt: skip


@dataclass(frozen=True)
class Field:
    """One column of a fitted table.

    ``keep`` ranks the optional columns: the lowest is left out first when the width runs
    short; ``None`` marks a column that is always shown. ``wrap`` lets the cells break
    between words (a list of task names) but never inside one, nor inside the header; other
    cells are never broken. A wrapping column gets at least ``room`` columns (or what its
    longest cell needs, if less) before an optional column is shown.
    """

    header: str
    keep: int | None = None
    left: bool = False
    wrap: bool = False
    room: int = 0


def fitted_table(
    title: str, fields: Sequence[Field], rows: Sequence[Sequence[str]], width: int
) -> RenderableType:
    """``rows`` under ``title`` as a table no wider than ``width``: all ``fields`` if they
    fit, else without the lowest-ranked optional ones, else stacked (:func:`stacked_table`)."""
    shown = list(range(len(fields)))
    droppable = sorted(
        (i for i, field in enumerate(fields) if field.keep is not None),
        key=lambda i: (fields[i].keep, -i),
    )
    while True:
        kept = [fields[i] for i in shown]
        cells = [[row[i] for i in shown] for row in rows]
        widths = column_widths(kept, cells, width)
        if widths is not None:
            table = _table(title, kept, cells, widths)
            left_out = [fields[i].header for i in range(len(fields)) if i not in shown]
            if left_out:
                table.caption = f"not shown at {width} columns: {', '.join(left_out)} (see --json)"
            return table
        if not droppable:
            return stacked_table(title, fields, rows)
        shown.remove(droppable.pop(0))


def table_width(widths: Sequence[int]) -> int:
    """How wide a boxed table is whose columns hold ``widths`` characters: each column has
    a space either side and a rule between it and the next, and the box has two sides."""
    return sum(widths) + 3 * len(widths) + 1


def column_widths(
    fields: Sequence[Field], rows: Sequence[Sequence[str]], width: int
) -> list[int] | None:
    """The width of each column so that every cell is whole and the table fits ``width``,
    or None if it cannot. A cell that does not wrap gets its full width; a wrapping column
    gets its least (:attr:`Field.room`, never less than its header or a word of a cell),
    then what is left over, the last such column first, up to its longest cell."""
    columns = [[field.header, *(row[i] for row in rows)] for i, field in enumerate(fields)]
    widest = [max(cell_len(cell) for cell in cells) for cells in columns]
    least = [
        max(cell_len(field.header), min(field.room, wide), *map(_longest_word, cells))
        if field.wrap
        else wide
        for field, cells, wide in zip(fields, columns, widest, strict=True)
    ]
    spare = width - table_width(least)
    if spare < 0:
        return None
    widths = list(least)
    for i in reversed(range(len(fields))):
        grant = min(spare, widest[i] - widths[i])
        widths[i] += grant
        spare -= grant
    return widths


def _longest_word(text: str) -> int:
    return max((cell_len(word) for word in text.split()), default=0)


def _table(
    title: str, fields: Sequence[Field], rows: Sequence[Sequence[str]], widths: Sequence[int]
) -> Table:
    table = Table(title=title, caption_justify="left")
    for field, wide in zip(fields, widths, strict=True):
        table.add_column(
            field.header,
            justify="left" if field.left else "right",
            no_wrap=not field.wrap,
            overflow="fold",
            width=wide,
        )
    for row in rows:
        table.add_row(*row)
    return table


def stacked_table(
    title: str, fields: Sequence[Field], rows: Sequence[Sequence[str]]
) -> RenderableType:
    """Each row as a block of ``header value`` lines, blocks apart: fits a narrow terminal
    (a value too long for it folds onto the next line, whole)."""
    table = Table(title=title, show_header=False, box=box.SIMPLE_HEAD, show_lines=False)
    table.add_column("field", no_wrap=True, style="bold")
    table.add_column("value", overflow="fold")
    for row in rows:
        for index, (field, value) in enumerate(zip(fields, row, strict=True)):
            table.add_row(field.header, value, end_section=index == len(fields) - 1)
    return table


SCHEDULER_FIELDS = (
    Field("name", left=True),
    Field("slots"),
    Field("queue"),
    Field("running", keep=10, wrap=True, room=11),
    Field("succeeded", keep=7),
    Field("failed", keep=6),
    Field("timed out", keep=5),
    Field("evicted", keep=4),
    Field("stole", keep=2),
    Field("stolen from", keep=1),
    Field("started", keep=3),
    Field("heartbeat", keep=9),
    Field("tasks", left=True, wrap=True, room=12),
)
"""``slots`` is busy/size; ``running`` the priority of each job it runs."""


def scheduler_rows(schedulers: Iterable[SchedulerStats]) -> list[list[str]]:
    """One row of :data:`SCHEDULER_FIELDS` per scheduler."""
    rows = []
    for s in schedulers:
        heartbeat = "-" if s.heartbeat_age_s is None else f"{s.heartbeat_age_s:.1f} s ago"
        rows.append(
            [
                s.name,
                f"{s.busy}/{s.size}",
                str(s.queued),
                " ".join(map(str, sorted(s.running_priorities))) or "-",
                *(str(n) for n in (s.succeeded, s.failed, s.timed_out, s.evicted, s.stole)),
                str(s.stolen_from),
                str(s.started),
                heartbeat,
                ", ".join(s.tasks) or "-",
            ]
        )
    return rows


def schedulers_title(schedulers: Sequence[SchedulerStats]) -> str:
    """``1 scheduler``, ``3 schedulers``."""
    return f"{len(schedulers)} scheduler{'' if len(schedulers) == 1 else 's'}"


def bus_table(stats: BusStats, width: int) -> RenderableType:
    """The bus's counters in as many figure/value column pairs as fit ``width`` (at most
    four), then a line per task whose jobs wait for a scheduler that serves it."""
    cells = [(name.replace("_", " "), str(getattr(stats, name))) for name in BUS_COUNTERS]
    pairs = next((n for n in (4, 3, 2) if _pairs_width(cells, n) <= width), 1)
    waiting = [
        Text(f"{count} waiting: no scheduler serves {task!r}", style="yellow")
        for task, count in sorted(stats.unserved.items())
    ]
    return Group(_pairs_table(stats, cells, pairs), *waiting)


def _pairs_width(cells: list[tuple[str, str]], pairs: int) -> int:
    """The width of :func:`_pairs_table` with ``pairs`` pairs of columns."""
    height = -(-len(cells) // pairs)
    columns = [cells[start : start + height] for start in range(0, len(cells), height)]
    widths = [max(cell_len(cell[side]) for cell in column) for column in columns for side in (0, 1)]
    return table_width(widths)


def _pairs_table(stats: BusStats, cells: list[tuple[str, str]], pairs: int) -> Table:
    table = Table(title=f"bus (up {stats.uptime_s:.0f} s)", show_header=False)
    for _ in range(pairs):
        table.add_column("figure", no_wrap=True)
        table.add_column("value", justify="right", no_wrap=True, style="bold")
    height = -(-len(cells) // pairs)
    for line in range(height):
        row: list[str] = []
        for column in range(pairs):
            index = column * height + line
            row.extend(cells[index] if index < len(cells) else ("", ""))
        table.add_row(*row)
    return table


WAIT_FIELDS = (
    Field("priority"),
    Field("jobs"),
    Field("p50"),
    Field("p90", keep=2),
    Field("p99", keep=1),
    Field("max", keep=3),
)


def wait_rows(stats: BusStats) -> list[list[str]]:
    """One row of :data:`WAIT_FIELDS` per priority."""
    return [
        [priority, str(p.count), *(f"{v:.3f}" for v in (p.p50, p.p90, p.p99, p.max))]
        for priority, p in stats.wait_s.items()
    ]


SCHEDULE_FIELDS = (
    Field("name", left=True),
    Field("when", left=True),
    Field("task", left=True, keep=3),
    Field("next", left=True),
    Field("last firing", left=True, keep=1),
    Field("outcome", left=True, keep=2),
)


def schedule_rows(schedules: Schedules) -> list[list[str]]:
    """One row of :data:`SCHEDULE_FIELDS` per periodic schedule."""
    rows = []
    for info in schedules.schedules:
        spec = info.spec
        when = f"every {spec.every:g} s" if spec.every is not None else f"{spec.cron} ({spec.tz})"
        rows.append(
            [
                spec.name,
                when,
                spec.task,
                "paused" if info.paused else _iso(info.next_fire),
                _iso(info.last_fire),
                info.last_outcome or "-",
            ]
        )
    return rows


def _iso(moment: float | None) -> str:
    return "-" if moment is None else iso_utc(round(moment, 3))


class StatusView:
    """A snapshot (with the periodic schedules, if given) drawn for the width rich renders
    it at: the schedulers, the bus's counters, the waits, the schedules. With
    ``fit_height`` it is also cut to the terminal's height, ending with a line that says
    how many lines are hidden and from which parts (for ``--watch``)."""

    def __init__(
        self, reply: StatsReply, schedules: Schedules | None = None, fit_height: bool = False
    ) -> None:
        self.reply = reply
        self.schedules = schedules
        self.fit_height = fit_height

    def sections(self, width: int) -> list[tuple[str, RenderableType]]:
        """Each part of the snapshot, named, laid out for ``width`` columns."""
        reply = self.reply
        parts: list[tuple[str, RenderableType]] = [
            (
                "schedulers",
                fitted_table(
                    schedulers_title(reply.schedulers),
                    SCHEDULER_FIELDS,
                    scheduler_rows(reply.schedulers),
                    width,
                ),
            ),
            ("bus", bus_table(reply.bus, width)),
            (
                "waits",
                fitted_table(
                    "wait before start, by priority (s)",
                    WAIT_FIELDS,
                    wait_rows(reply.bus),
                    width,
                ),
            ),
        ]
        if self.schedules is not None:
            title = f"{len(self.schedules.schedules)} schedules"
            rows = schedule_rows(self.schedules)
            parts.append(("schedules", fitted_table(title, SCHEDULE_FIELDS, rows, width)))
        return parts

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        sections = self.sections(options.max_width)
        if not self.fit_height:
            yield Group(*(renderable for _, renderable in sections))
            return
        height = options.height or options.size.height
        yield from _cut_to_height(console, options, sections, height)


def _cut_to_height(
    console: Console,
    options: ConsoleOptions,
    sections: list[tuple[str, RenderableType]],
    height: int,
) -> Iterable[Segment]:
    """The lines of ``sections`` that fit in ``height`` lines; if some do not, the last
    line says how many are hidden and from which sections."""
    rendered = [
        (name, console.render_lines(renderable, options.update(height=None), pad=False))
        for name, renderable in sections
    ]
    total = sum(len(lines) for _, lines in rendered)
    room = height if total <= height else max(0, height - 1)
    shown = 0
    hidden_from: list[str] = []
    for name, lines in rendered:
        for line in lines:
            if shown < room:
                yield from line
                yield Segment.line()
                shown += 1
            elif name not in hidden_from:
                hidden_from.append(name)
    if hidden_from:
        yield from _hidden_notice(console, total - shown, hidden_from, options.max_width)


def _hidden_notice(
    console: Console, count: int, sections: list[str], width: int
) -> Iterable[Segment]:
    """One line, at most ``width`` wide: ``… 12 more lines hidden (waits, schedules)``,
    with the remedy when it fits."""
    text = f"… {count} more lines hidden ({', '.join(sections)})"
    remedy = ": a taller terminal shows them, or run without --watch"
    if len(text) + len(remedy) <= width:
        text += remedy
    line = Text(text, style="yellow", no_wrap=True, overflow="crop")
    line.truncate(width)
    yield from console.render(line)
