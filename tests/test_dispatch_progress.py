"""The dispatch core shows a running job's ``progress`` and ``output`` reports as events
without journaling them, and keeps the output's tail with the final state."""

from __future__ import annotations

from dispatch_helpers import WALL, add, emitted, job, new_core, report, submit

from scheduler.policy.dispatch.decisions import Ignored
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.policy.dispatch.reports import keep_tail
from scheduler.protocol import JobEvent
from scheduler.protocol_types import MAX_OUTPUT_BYTES
from scheduler.tools.job_views import progress_text


def running_core() -> Dispatcher:
    core = new_core()
    add(core, "a")
    submit(core, job())
    report(core, "a", "j0", "started")
    core.take_changes()
    return core


def status(core: Dispatcher, job_id: str = "j0") -> JobEvent:
    event = core.watch(job_id, WALL)
    assert isinstance(event, JobEvent)
    return event


def test_a_progress_report_is_an_event_kept_in_memory_not_journaled() -> None:
    core = running_core()
    (shown,) = emitted(report(core, "a", "j0", "progress", progress=0.4, message="copying"))
    event = shown.event
    assert (event.event, event.state, event.progress, event.message) == (
        "progress",
        "running",
        0.4,
        "copying",
    )
    assert (event.scheduler, event.attempt) == ("a", 1)
    assert core.take_changes() == ([], []), "nothing to journal"
    assert (status(core).progress, status(core).message) == (0.4, "copying")


def test_output_reports_are_events_and_the_status_keeps_their_tail() -> None:
    core = running_core()
    (first,) = emitted(report(core, "a", "j0", "output", output="one\n"))
    (second,) = emitted(report(core, "a", "j0", "output", output="two\n"))
    assert (first.event.event, first.event.output, second.event.output) == (
        "output",
        "one\n",
        "two\n",
    )
    assert core.take_changes() == ([], [])
    assert status(core).output == "one\ntwo\n"
    big = "x" * (MAX_OUTPUT_BYTES - 2)
    report(core, "a", "j0", "output", output=big)
    assert status(core).output == "o\n" + big, "the last 4 KiB"


def test_the_closing_reports_tail_is_journaled_with_the_final_state() -> None:
    core = running_core()
    report(core, "a", "j0", "output", output="partial\n")
    (final,) = emitted(report(core, "a", "j0", "succeeded", output="whole tail\n"))
    assert (final.event.event, final.event.output) == ("succeeded", "whole tail\n")
    (saved,), _ = core.take_changes()
    assert (saved.state, saved.output) == ("succeeded", "whole tail\n")


def test_a_new_attempt_starts_with_no_progress_or_output() -> None:
    core = running_core()
    report(core, "a", "j0", "progress", progress=0.5)
    report(core, "a", "j0", "output", output="first attempt\n")
    report(core, "a", "j0", "evicted")
    report(core, "a", "j0", "started", attempt=2)
    again = status(core)
    assert (again.state, again.progress, again.message, again.output) == (
        "running",
        None,
        None,
        None,
    )


def test_progress_of_a_job_not_running_or_from_another_holder_is_ignored() -> None:
    core = new_core()
    add(core, "a")
    add(core, "b")
    submit(core, job())
    (ignored,) = report(core, "a", "j0", "progress", progress=0.1)
    assert isinstance(ignored, Ignored) and "assigned" in ignored.reason
    (other,) = report(core, "b", "j0", "output", output="x")
    assert isinstance(other, Ignored)
    (unknown,) = report(core, "a", "nope", "progress", progress=0.1)
    assert isinstance(unknown, Ignored)


def test_keep_tail_cuts_by_bytes_and_drops_a_cut_character() -> None:
    assert keep_tail("abc", 3) == "abc"
    assert keep_tail("abcdef", 3) == "def"
    assert keep_tail("aé", 1) == ""
    assert keep_tail("éa", 2) == "a"


def test_a_retrying_event_carries_the_failed_attempts_tail() -> None:
    core = new_core()
    add(core, "a")
    submit(core, job(max_retries=1, retry_backoff=0))
    report(core, "a", "j0", "started")
    decisions = report(core, "a", "j0", "failed", error="boom", output="last words\n")
    retrying = [e.event for e in emitted(decisions) if e.event.event == "retrying"]
    assert [(e.event, e.output) for e in retrying] == [("retrying", "last words\n")]


def test_jobs_show_prints_a_running_jobs_progress() -> None:
    core = running_core()
    assert progress_text(status(core)) == ""
    report(core, "a", "j0", "progress", progress=0.4, message='copying "a"')
    assert progress_text(status(core)) == '40% "copying \\"a\\""'
