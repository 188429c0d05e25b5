"""Which job a text names among the ids that start with it (pure), and the whole of
``resolve_ids`` against a real bus."""

from __future__ import annotations

import pytest

from scheduler.bus.server import BusServer
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobPayload
from scheduler.tools.job_ids import IdProblem, UnresolvedIds, choose, resolve_ids

PARENT = "0123456789abcdef0123456789abcdef"


def test_a_whole_id_wins_over_the_ids_it_starts() -> None:
    assert choose("ab", ["ab", "abc"]) == "ab"


def test_a_broadcast_job_s_runs_do_not_make_its_prefix_ambiguous() -> None:
    matches = [PARENT, f"{PARENT}/vm-1", f"{PARENT}/vm-2"]
    assert choose(PARENT[:12], matches) == PARENT
    assert choose(f"{PARENT}/vm-1", matches) == f"{PARENT}/vm-1"
    assert isinstance(choose(f"{PARENT}/vm", matches[1:]), IdProblem)


@pytest.mark.parametrize(
    ("text", "matches", "more", "words"),
    [
        ("abcd", [], False, "no job id starts with abcd"),
        ("ab", [], False, "no job ab"),
        ("ab", ["abcd"], False, "ab is too short: give at least 4 characters"),
        ("abcd", ["abcd1", "abcd2"], False, "abcd is ambiguous: 2 jobs match (abcd1, abcd2)"),
        ("abcd", [f"abcd{n}" for n in range(7)], True, "more than 7 jobs match (abcd0, "),
        ("abcd", [f"abcd{n}" for n in range(7)], False, "abcd3, abcd4, ...)"),
    ],
)
def test_problems_say_what_is_wrong(text: str, matches: list[str], more: bool, words: str) -> None:
    problem = choose(text, matches, more)
    assert isinstance(problem, IdProblem) and words in problem.message


async def test_resolve_ids_asks_the_bus_and_reports_every_problem_at_once(bus: BusServer) -> None:
    async with ProducerClient(bus.url) as client:
        for job_id in ("dup-1", "dup-2", "solo-1"):
            await client.submit(JobPayload(runtime=5, job_id=job_id))
        await client.cancel("solo-1")  # final jobs count too
        assert await resolve_ids(client, ["solo", "dup-1", "solo-1"]) == ["solo-1", "dup-1"]
        with pytest.raises(UnresolvedIds) as raised:
            await resolve_ids(client, ["dup-", "", "x" * 201])
        assert raised.value.message.splitlines() == [
            "dup- is ambiguous: 2 jobs match (dup-1, dup-2); give more characters",
            "'' is not a job id (1 to 200 characters)",
            f"{'x' * 201!r} is not a job id (1 to 200 characters)",
        ]
