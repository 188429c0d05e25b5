"""Broadcast jobs in the dispatch core: one pinned run per v2 scheduler serving the task,
never placed or stolen elsewhere; the parent ends when every run has, succeeded only if
all did; a run whose scheduler is gone ends dead; refusals name the field."""

from __future__ import annotations

from dispatch_helpers import (
    WALL,
    add,
    assigns,
    emitted,
    events,
    info,
    job,
    new_core,
    reply,
    report,
    submit,
)

from scheduler.policy.dispatch.broadcast import gone_error, parent_outcome, targets
from scheduler.protocol import Accepted, Error


def test_a_broadcast_runs_once_on_each_serving_scheduler() -> None:
    core = new_core()
    add(core, "a", size=1)
    add(core, "b", size=1)
    add(core, "c", size=1, tasks=["other"])
    add(core, "old", reports=False)
    out = submit(core, job(job_id="p", broadcast=True))
    accepted = reply(out)
    assert isinstance(accepted, Accepted) and accepted.runs == ["p/a", "p/b"]
    assert sorted(assigns(out)) == [("a", "p/a"), ("b", "p/b")]
    assert info(core, "p").state == "blocked"
    core.check_invariants()
    report(core, "a", "p/a", "succeeded", result=1)
    assert core.job("p") is not None
    done = report(core, "b", "p/b", "succeeded", result=2)
    assert events(done) == ["succeeded", "succeeded"]
    changed, _ = core.take_changes()
    parent = next(j for j in changed if j.id == "p")
    assert parent.state == "succeeded" and parent.result == {"p/a": 1, "p/b": 2}
    core.check_invariants()


def test_a_failed_run_fails_the_parent_naming_it() -> None:
    core = new_core()
    add(core, "a")
    add(core, "b")
    submit(core, job(job_id="p", broadcast=True))
    report(core, "a", "p/a", "failed", error="x")
    out = report(core, "b", "p/b", "succeeded")
    parent = [d.event for d in emitted(out) if d.event.id == "p"]
    assert parent[0].event == "failed"
    assert parent[0].error == "1 of 2 runs did not succeed: p/a failed"


def test_a_pinned_run_waits_for_its_scheduler_and_is_never_stolen() -> None:
    core = new_core(steal="urgent")
    add(core, "a", size=1)
    add(core, "b", size=1)
    submit(core, job(job_id="busy", priority=0))  # a runs it
    report(core, "a", "busy", "started")
    out = submit(core, job(job_id="p", priority=9, broadcast=True))
    assert ("a", "p/a") in assigns(out)  # waits in a's local queue
    report(core, "b", "p/b", "succeeded")  # b is idle now: it may not steal p/a
    assert info(core, "p/a").holder == "a" and info(core, "p/a").thief is None
    core.check_invariants()


def test_a_run_whose_scheduler_is_gone_ends_dead() -> None:
    core = new_core()
    add(core, "a", size=1)
    add(core, "b", size=1)
    submit(core, job(job_id="p", broadcast=True))
    out = core.detach("a", clean=True, now=0.0, wall=WALL)
    assert "dead" in events(out)
    assert core.job("p/a") is None
    final = report(core, "b", "p/b", "succeeded")
    assert events(final) == ["succeeded", "failed"]
    assert gone_error("a") in str(out)
    core.check_invariants()


def test_broadcast_refusals_name_the_field() -> None:
    core = new_core()
    out = reply(submit(core, job(broadcast=True)))
    assert isinstance(out, Error) and out.field == "payload.broadcast"
    assert "no connected scheduler serves" in out.message
    add(core, "a")
    out = reply(submit(core, job(pin="a")))
    assert out.field == "payload.pin"
    submit(core, job(job_id="x"))
    out = reply(submit(core, job(broadcast=True, depends_on=["x"])))
    assert out.field == "payload.broadcast"
    out = reply(submit(core, job(job_id="x", broadcast=True, on_conflict="replace")))
    assert out.field == "payload.job_id"
    submit(core, job(job_id="q/a"))
    out = reply(submit(core, job(job_id="q", broadcast=True)))
    assert out.field == "payload.job_id" and "q/a is taken" in out.message


def test_pure_rules() -> None:
    assert targets([("b", True, True, ["t"]), ("a", True, True, ["t"])], "t") == ["a", "b"]
    assert parent_outcome({"p/a": "succeeded"}) == ("succeeded", None)


def test_cancelling_a_broadcast_cancels_its_runs() -> None:
    core = new_core()
    add(core, "a", size=1)
    add(core, "b", size=1)
    submit(core, job(job_id="busy", priority=0))
    report(core, "a", "busy", "started")
    submit(core, job(job_id="p", priority=9, broadcast=True))
    report(core, "b", "p/b", "started")
    out = core.cancel("p", WALL)
    answer = reply(out)
    assert (answer.state, answer.message) == ("blocked", "stopping its runs")
    assert core.job("p/a") is not None  # waits at a: stopped through its holder
    report(core, "a", "p/a", "cancelled")
    final = report(core, "b", "p/b", "cancelled")
    assert events(final) == ["cancelled", "cancelled"]
    core.check_invariants()


def test_cancelling_a_broadcast_whose_runs_all_wait_ends_it_at_once() -> None:
    core = new_core(start_deadline=1.0)
    add(core, "a", size=1)
    submit(core, job(job_id="p", broadcast=True))
    core.tick(2.0, WALL)  # a started nothing in time: p/a waits in the backlog for it
    assert info(core, "p/a").state == "queued" and core.backlog() == ["p/a"]
    out = core.cancel("p", WALL)
    assert (reply(out).state, reply(out).message) == ("cancelled", "cancelled")
    assert events(out) == ["cancelled", "cancelled"]
    assert core.job("p") is None
    core.check_invariants()
