"""The SELECT behind a job listing (``list_jobs``, ``/api/jobs``, id prefixes), written
once for both stores: each names its dialect (:class:`Dialect`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from scheduler.policy.listing import JobQuery


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one store's SQL writes a listing: the SELECT of a job row (up to its FROM),
    a job's task as an expression, the parameter mark, and the condition on a set of
    states with its parameters."""

    select: str
    task: str
    mark: str
    states: Callable[[list[str]], tuple[str, list[object]]]


def find_statement(
    dialect: Dialect, query: JobQuery, limit: int, newest_first: bool
) -> tuple[str, list[object]]:
    """The SELECT of the first ``limit`` jobs ``query`` wants, in submit order (or newest
    first), and its parameters. The id prefix is a range of the primary key."""
    mark = dialect.mark
    where: list[str] = []
    params: list[object] = []
    if query.states is not None:
        condition, values = dialect.states(sorted(query.states))
        where.append(condition)
        params.extend(values)
    for condition, value in (
        (f"{dialect.task} = {mark}", query.task),
        (f"submitted_at >= {mark}", query.since),
        (f"id >= {mark}", query.prefix),
        (f"id < {mark}", None if query.prefix is None else after_prefix(query.prefix)),
        (f"owner = {mark}", query.owner),
    ):
        if value is not None:
            where.append(condition)
            params.append(value)
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    order = "DESC" if newest_first else "ASC"
    return (
        f"{dialect.select}{condition} ORDER BY submitted_at {order}, seq {order} LIMIT {mark}",
        [*params, limit],
    )


def after_prefix(prefix: str) -> str | None:
    """The least text greater than every text that starts with ``prefix`` (code point
    order: SQLite's BINARY order of UTF-8, and PostgreSQL's under the C collation), or
    None if there is none."""
    while prefix and prefix[-1] == chr(0x10FFFF):
        prefix = prefix[:-1]
    if not prefix:
        return None
    last = ord(prefix[-1]) + 1
    if 0xD800 <= last <= 0xDFFF:  # surrogates cannot be stored: skip past them
        last = 0xE000
    return prefix[:-1] + chr(last)
