"""Which report closes an attempt whose process ended (scheduler.policy.closing): pure,
so every rule is checked with plain values."""

from __future__ import annotations

import pytest

from scheduler.policy.closing import Ending, Outcome, Why, closing_report, exit_text


def ending(outcome: Outcome = "exited", exit_code: int | None = 0, **fields: object) -> Ending:
    return Ending(
        outcome=outcome,
        exit_code=exit_code,
        wall_s=1.5,
        cpu_s=0.5,
        max_rss_kb=2048,
        **fields,  # type: ignore[arg-type]
    )


def test_a_process_that_exited_0_succeeded_with_its_result() -> None:
    report = closing_report("j", 2, ending(result={"n": 1}))
    assert report is not None
    assert (report.event, report.id, report.attempt, report.result) == (
        "succeeded",
        "j",
        2,
        {"n": 1},
    )
    assert (report.wall_s, report.cpu_s, report.max_rss_kb, report.exit_code) == (1.5, 0.5, 2048, 0)


def test_a_timeout_wins_over_what_the_task_left() -> None:
    report = closing_report("j", 1, ending("timed_out", -15, timeout_s=3.0, error="E: x"))
    assert report is not None
    assert (report.event, report.error, report.traceback) == (
        "timed_out",
        "timed out after 3 s",
        None,
    )


def test_an_exception_the_task_raised_fails_it_with_the_traceback() -> None:
    report = closing_report("j", 1, ending(exit_code=1, error="ValueError: x", traceback="tb"))
    assert report is not None
    assert (report.event, report.error, report.traceback) == ("failed", "ValueError: x", "tb")
    bare = closing_report("j", 1, ending(exit_code=1, error="ValueError", traceback=""))
    assert bare is not None and bare.traceback is None


def test_a_bad_exit_status_fails_it_saying_how() -> None:
    report = closing_report("j", 1, ending(exit_code=3))
    assert report is not None and (report.event, report.error) == ("failed", "exit code 3")


def test_its_own_end_counts_even_when_a_stop_raced_it() -> None:
    report = closing_report("j", 1, ending(why="evicted"))
    assert report is not None and report.event == "succeeded"


@pytest.mark.parametrize(
    ("why", "event", "error"),
    [("evicted", "evicted", None), ("cancelled", "cancelled", None), ("limited", "failed", "over")],
)
def test_a_stopped_process_is_reported_for_why_it_was_stopped(
    why: Why, event: str, error: str | None
) -> None:
    report = closing_report(
        "j", 1, ending("stopped", -15, why=why, evictions=2, limit_error="over")
    )
    assert report is not None and (report.event, report.error) == (event, error)
    assert report.evictions == (2 if why == "evicted" else None)


@pytest.mark.parametrize("why", ["dropped", "shutdown", None])
def test_nobody_hears_of_a_dropped_attempt_or_one_stopped_for_shutdown(why: Why | None) -> None:
    assert closing_report("j", 1, ending("stopped", -15, why=why)) is None
    if why == "dropped":  # the bus took it back: even its own end is not reported
        assert closing_report("j", 1, ending(why=why)) is None


def test_exit_text_covers_lost_status_and_unnamed_signals() -> None:
    assert exit_text(None) == "exit status lost"
    assert exit_text(2) == "exit code 2"
    assert exit_text(-9) == "killed by signal 9 (SIGKILL)"
    assert exit_text(-200) == "killed by signal 200"
