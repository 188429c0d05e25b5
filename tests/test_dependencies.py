"""Job dependencies in the dispatch core: block, release, skip (cascading), run anyway,
results passed, unknown ids, owners, cycles in a batch, and restore after a restart."""

from __future__ import annotations

from typing import Any

from dispatch_helpers import (
    WALL,
    add,
    assigns,
    events,
    job,
    new_core,
    reply,
    report,
    sends,
    submit,
    submit_id,
)

from scheduler.codec import ProtocolError
from scheduler.policy.dispatch.dependencies import (
    Dependencies,
    batch_order,
    restore_ids,
    skip_reason,
)
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.policy.job import Job
from scheduler.protocol import Error, JobPayload, SubmittedMany


def after(*ids: str, **more: Any) -> JobPayload:
    return job(depends_on=list(ids), **more)


def state_of(core: Dispatcher, job_id: str) -> str | None:
    snapshot = core.job(job_id)
    return None if snapshot is None else snapshot.state


def finished(core: Dispatcher) -> dict[str, Job]:
    changed, _ = core.take_changes()
    return {j.id: j for j in changed if j.final}


def test_a_job_is_blocked_until_its_dependency_succeeds_then_runs() -> None:
    core = new_core()
    add(core, "a", size=2)
    a = submit_id(core)
    decisions = submit(core, after(a))
    assert events(decisions) == ["accepted", "blocked"]
    assert state_of(core, "j1") == "blocked" and assigns(decisions) == []
    core.check_invariants()
    report(core, "a", a, "started")
    released = report(core, "a", a, "succeeded", result=1)
    assert events(released) == ["succeeded", "assigned"]
    assert assigns(released) == [("a", "j1")]
    core.check_invariants()


def test_results_are_passed_only_when_asked() -> None:
    core = new_core()
    add(core, "a", size=3)
    a, b = submit_id(core), submit_id(core)
    submit(core, after(a, b, pass_results=True))
    submit(core, after(a))
    report(core, "a", a, "succeeded", result={"x": 1})
    out = report(core, "a", b, "succeeded", result=[2])
    by_id = {s.assignment.id: s.assignment for s in sends(out)}
    assert by_id["j2"].results == {a: {"x": 1}, b: [2]}
    out = [*report(core, "a", a, "succeeded")]  # another attempt: ignored
    assert sends(out) == []


def test_a_failed_dependency_skips_its_dependents_down_the_line() -> None:
    core = new_core()
    add(core, "a", size=1)
    a = submit_id(core)
    b = submit_id(core, after(a))
    c = submit_id(core, after(b))
    d = submit_id(core, after(a, on_dependency_failure="run"))
    core.take_changes()
    out = report(core, "a", a, "failed", error="boom")
    assert events(out)[:3] == ["failed", "skipped", "skipped"]
    ended = finished(core)
    assert ended[b].state == ended[c].state == "skipped"
    # The record keeps why (the journal has it; `jobs show` says it), as the event does.
    assert ended[b].errors == (skip_reason(a, "failed"),) and skip_reason(a, "failed") in str(out)
    assert f"dependency {b} ended skipped" in str(out)
    assert ended[c].errors == (f"dependency {b} ended skipped",)
    assert state_of(core, d) in ("queued", "assigned")
    core.check_invariants()


def test_cancelling_a_blocked_job_or_its_dependency() -> None:
    core = new_core()
    a = submit_id(core)
    b = submit_id(core, after(a))
    c = submit_id(core, after(a))
    assert events(core.cancel(b, WALL)) == ["cancelled"]
    assert events(core.cancel(a, WALL)) == ["cancelled", "skipped"]
    assert core.job(c) is None
    core.check_invariants()


def test_dependencies_already_final_at_submit() -> None:
    core = new_core()
    stored = {
        "ok": Job("ok", job(), 0, WALL, state="succeeded", result=5),
        "bad": Job("bad", job(), 1, WALL, state="dead"),
    }
    out = submit(core, after("ok", pass_results=True), stored=stored)
    assert events(out) == ["accepted"] and state_of(core, "j0") == "queued"
    out = submit(core, after("ok", "bad"), stored=stored)
    assert events(out) == ["accepted", "skipped"]
    assert finished(core)["j1"].errors == ("dependency bad ended dead",)  # the journal keeps why
    out = submit(core, after("bad", on_dependency_failure="run"), stored=stored)
    assert events(out) == ["accepted"]
    add(core, "a", size=3)
    assert core.job("j0") is not None
    core.check_invariants()


def test_unknown_self_and_foreign_ids_are_refused_naming_the_index() -> None:
    core = new_core()
    mine = submit_id(core)
    out = reply(submit(core, after(mine, "nope")))
    assert isinstance(out, Error) and out.field == "payload.depends_on[1]"
    assert "no job nope" in out.message
    out = reply(submit(core, after("me", job_id="me")))
    assert out.field == "payload.depends_on[0]" and "itself" in out.message
    theirs = reply(submit(core, job(), owner="alice")).id
    out = reply(submit(core, after(theirs), owner="bob"))
    assert out.field == "payload.depends_on[0]" and "another submitter" in out.message
    assert reply(submit(core, after(theirs), owner="alice")).id


def test_a_batch_refers_to_its_own_jobs_in_any_order() -> None:
    core = new_core()
    add(core, "a", size=4)
    batch: list[JobPayload | ProtocolError] = [
        after("first", job_id="second"),
        job(job_id="first"),
        ProtocolError("frame: bad", None),
    ]
    out = core.submit_many(batch, 0.0, WALL)
    results = reply(out)
    assert isinstance(results, SubmittedMany)
    assert [r.id for r in results.results] == ["second", "first", None]
    assert state_of(core, "second") == "blocked"
    assert assigns(out) == [("a", "first")]


def test_a_cycle_in_a_batch_is_refused_naming_its_jobs() -> None:
    core = new_core()
    batch: list[JobPayload | ProtocolError] = [
        after("y", job_id="x"),
        after("x", job_id="y"),
        after("x", job_id="z"),
        job(job_id="free"),
    ]
    results = reply(core.submit_many(batch, 0.0, WALL)).results
    assert results[0].field == "jobs.0.depends_on"
    assert results[0].error == "jobs.0.depends_on: a cycle: x -> y -> x"
    assert results[1].error == "jobs.1.depends_on: a cycle: x -> y -> x"
    assert results[2].error == "jobs.2.depends_on: depends on a cycle: x -> y -> x"
    assert results[3].id == "free"
    assert len(core) == 1


def test_a_batch_job_may_depend_on_one_skipped_at_once() -> None:
    core = new_core()
    stored = {"bad": Job("bad", job(), 0, WALL, state="failed")}
    batch: list[JobPayload | ProtocolError] = [
        after("bad", job_id="one"),
        after("one", job_id="two"),
    ]
    out = core.submit_many(batch, 0.0, WALL, stored=stored)
    assert [r.id for r in reply(out).results] == ["one", "two"]
    assert events(out) == ["accepted", "skipped", "accepted", "skipped"]


def test_batch_order_puts_dependencies_first() -> None:
    items = [after("b", job_id="a"), after("c", job_id="b"), job(job_id="c"), job()]
    assert batch_order(items) == ([2, 1, 0, 3], {})
    assert batch_order([]) == ([], {})


def test_replacing_a_blocked_job_keeps_its_dependents_waiting() -> None:
    core = new_core()
    a = submit_id(core)
    submit(core, after(a, job_id="b"))
    submit(core, after("b", job_id="c"))
    out = submit(core, job(job_id="b", on_conflict="replace", runtime=2.0))
    assert reply(out).replaced
    assert state_of(core, "b") == "queued" and state_of(core, "c") == "blocked"
    core.check_invariants()


def test_restore_rebuilds_waiting_and_settles_what_ended_while_down() -> None:
    def saved(job_id: str, seq: int, state: str, *deps: str, **more: Any) -> Job:
        payload = after(*deps, **more) if deps else job()
        return Job(job_id, payload, seq, WALL - 10, state=state, updated_at=WALL - 10)  # type: ignore[arg-type]

    jobs = [
        saved("up", 0, "queued"),
        saved("waits", 1, "blocked", "up"),
        saved("ready", 2, "blocked", "done", pass_results=True),
        saved("doomed", 3, "blocked", "broke"),
        saved("downstream", 4, "blocked", "doomed"),
        saved("lost", 5, "blocked", "vacuumed"),
        saved("running", 6, "queued", "done", pass_results=True),
    ]
    stored = {
        "done": Job("done", job(), 9, WALL, state="succeeded", result="r"),
        "broke": Job("broke", job(), 8, WALL, state="failed"),
    }
    assert restore_ids(jobs) == {"done", "broke", "vacuumed"}
    core = new_core()
    core.restore(jobs, 10, 100.0, WALL, stored=stored)
    core.check_invariants()
    assert state_of(core, "waits") == "blocked"
    assert state_of(core, "ready") == "queued"
    ended = finished(core)
    assert set(ended) == {"doomed", "downstream", "lost"}
    add(core, "a", size=4, now=100.0)
    out = core.tick(100.0, WALL)
    by_id = {s.assignment.id: s.assignment for s in sends(out)}
    assert by_id["ready"].results == {"done": "r"}
    core.check_invariants()
    assert (
        skip_reason("x", "missing from the journal") == "dependency x is missing from the journal"
    )


def test_dependencies_book_and_forget() -> None:
    deps = Dependencies()
    deps.block("b", ["a", "c"])
    deps.forget("b")
    assert deps.waiting == {} and deps.dependents == {}
    assert deps.settle("a") == []


def test_the_first_of_several_failed_dependencies_is_named() -> None:
    core = new_core()
    stored = {
        "bad1": Job("bad1", job(), 0, WALL, state="failed"),
        "bad2": Job("bad2", job(), 1, WALL, state="dead"),
    }
    out = submit(core, after("bad1", "bad2"), stored=stored)
    assert "dependency bad1 ended failed" in str(out)
    saved = Job("w", after("bad1", "bad2"), 2, WALL, state="blocked", updated_at=WALL)
    core.restore([saved], 3, 0.0, WALL, stored=stored)
    ended = finished(core)["w"]
    assert (ended.state, ended.errors) == ("skipped", ("dependency bad1 ended failed",))


def test_a_batch_job_waits_for_two_of_the_batch() -> None:
    items = [job(job_id="a"), job(job_id="b"), after("a", "b", job_id="c")]
    assert batch_order(items) == ([0, 1, 2], {})


def test_a_dependency_handed_to_a_v1_scheduler_settles_its_dependents() -> None:
    core = new_core()
    add(core, "old", reports=False)
    a = submit_id(core, job(runtime=1.0))
    b = submit_id(core, after(a))
    c = submit_id(core, after(a, on_dependency_failure="run"))
    core.tick(2.0, WALL)
    assert core.job(b) is None
    assert state_of(core, c) == "assigned"
    ended = finished(core)
    assert ended[b].state == "skipped"
    assert skip_reason(a, "assigned").endswith("reports no outcome")
    core.check_invariants()
