"""Job ids as people type them: a whole id, or a unique prefix of one (as git takes a
commit), resolved on the bus with one ``list_jobs`` request per prefix.

Every ``jobs`` command that takes ids resolves them with :func:`resolve_ids`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import click

from scheduler.producer.client import ProducerClient
from scheduler.protocol_types import MAX_NAME_LEN

MIN_PREFIX: Final = 4
"""The shortest prefix taken for an id (a whole id may be shorter)."""

MATCHES_READ: Final = 50
"""How many ids starting with a prefix the bus is asked for: enough to see a broadcast
job together with its runs."""

SHOWN: Final = 5
"""How many of the ids an ambiguous prefix matches the error names."""


class UnresolvedIds(click.ClickException):
    """Some ids did not name exactly one job; the message has one line for each of them
    (exit code 1)."""


async def resolve_ids(client: ProducerClient, prefixes: Sequence[str]) -> list[str]:
    """The whole id of the job each of ``prefixes`` names, in order, without repeats.

    A text names the job whose id it is, else the one job whose id starts with it (at
    least :data:`MIN_PREFIX` characters); a broadcast job's runs (``ID/scheduler``) do
    not make a prefix of its id ambiguous. Final jobs count as long as the journal keeps
    them. Raise :class:`UnresolvedIds` naming every text that is unknown, too short or
    ambiguous (with a few of the ids it matches).
    """
    results = await asyncio.gather(*(_resolve(client, text) for text in prefixes))
    problems = [r for r in results if isinstance(r, IdProblem)]
    if problems:
        raise UnresolvedIds("\n".join(p.message for p in problems))
    return list(dict.fromkeys(r for r in results if isinstance(r, str)))


@dataclass(frozen=True, slots=True)
class IdProblem:
    """Why a text names no single job."""

    message: str


async def _resolve(client: ProducerClient, text: str) -> str | IdProblem:
    if not text or len(text) > MAX_NAME_LEN:
        return IdProblem(f"{text!r} is not a job id (1 to {MAX_NAME_LEN} characters)")
    listing = await client.list_jobs(limit=MATCHES_READ, final=True, prefix=text)
    return choose(text, [event.id for event in listing.jobs], listing.more)


def choose(text: str, matches: Sequence[str], more: bool = False) -> str | IdProblem:
    """The id ``text`` names among ``matches`` (the ids that start with it, in arrival
    order; ``more``: there are others), or the problem to report."""
    if text in matches:
        return text
    heads = [m for m in matches if not any(m.startswith(f"{x}/") for x in matches)]
    if len(text) < MIN_PREFIX:
        if not heads:
            return IdProblem(f"no job {text}")
        return IdProblem(
            f"{text} is too short: give at least {MIN_PREFIX} characters of a job id,"
            " or the whole id"
        )
    if not heads:
        return IdProblem(f"no job id starts with {text} (never submitted, or vacuumed)")
    if len(heads) == 1:
        return heads[0]
    count = f"more than {len(heads)}" if more else str(len(heads))
    named = ", ".join(heads[:SHOWN]) + (", ..." if len(heads) > SHOWN else "")
    return IdProblem(f"{text} is ambiguous: {count} jobs match ({named}); give more characters")
