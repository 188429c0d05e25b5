"""Broadcast jobs in the dispatch core: one pinned run per v2 scheduler serving the task,
never placed or stolen elsewhere; the parent ends when every run has, succeeded only if
all did; a run whose scheduler is gone ends dead; refusals name the field."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
from dispatch_helpers import (
    LEASE,
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
    stops,
    submit,
)
from pytest import MonkeyPatch

from scheduler.policy.dispatch import broadcast
from scheduler.policy.dispatch.broadcast import (
    MISSING,
    gone_error,
    parent_outcome,
    targets,
    unrecorded_error,
)
from scheduler.policy.dispatch.decisions import Decision
from scheduler.policy.dispatch.dependencies import restore_ids
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.policy.job import Job
from scheduler.protocol import Accepted, Error, Held, JobEvent
from scheduler.protocol_types import FINAL_EVENTS


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
    # Kept in the journal too, so `jobs show` says why after the event is gone.
    (record,) = [j for j in core.take_changes()[0] if j.id == "p"]
    assert record.errors == ("1 of 2 runs did not succeed: p/a failed",)


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
    out = reply(submit(core, job(job_id="q/a")))
    assert out.field == "payload.job_id" and "'/' are reserved" in out.message
    # A job the bus holds under a run's id (one journaled before client ids could not
    # hold '/'): the broadcast is refused, not merged with it.
    submit(core, job(job_id="q/a"), by_bus=True)
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


# --- across a bus restart --------------------------------------------------------------


class Journal:
    """What a bus journals of ``core``'s jobs (copies of their latest records), and a
    restart of the bus from it."""

    def __init__(self, core: Dispatcher) -> None:
        self.core = core
        self.records: dict[str, Job] = {}

    def keep(self) -> None:
        changed, deleted = self.core.take_changes()
        self.records.update((job.id, copy.copy(job)) for job in changed)
        for job_id in deleted:
            self.records.pop(job_id, None)

    def restart(self, now: float = 100.0, promised: float | None = None) -> Dispatcher:
        """A new core restored from the records (the bus's ``restore_ids`` look-up)."""
        live = [copy.copy(job) for job in self.records.values() if not job.final]
        stored = {i: self.records[i] for i in restore_ids(live) if i in self.records}
        core = self.core = new_core()
        core.restore(live, 100, now, WALL, promised_until=promised, stored=stored)
        core.check_invariants()
        return core


def broadcast_to(*names: str, started: bool = True, **config: Any) -> Journal:
    """A core with schedulers ``names`` running (``started``) the runs of broadcast p."""
    core = new_core(**config)
    for name in names:
        add(core, name, size=1)
    submit(core, job(job_id="p", broadcast=True))
    for name in names if started else ():
        report(core, name, f"p/{name}", "started")
    journal = Journal(core)
    journal.keep()
    assert journal.records["p"].payload.depends_on == [f"p/{n}" for n in names]
    return journal


def parent_end(decisions: list[Decision]) -> JobEvent:
    return next(d.event for d in emitted(decisions) if d.event.id == "p")


def test_runs_running_across_a_restart_end_the_parent() -> None:
    journal = broadcast_to("a", "b")
    report(journal.core, "a", "p/a", "failed", error="x")  # before the restart
    journal.keep()
    core = journal.restart()
    assert info(core, "p").state == "blocked"
    assert stops(add(core, "b", size=1, now=100.0, held=[Held("p/b", 1)])) == []
    out = report(core, "b", "p/b", "succeeded", now=101.0)
    core.check_invariants()
    assert core.job("p") is None and core.job("p/a") is None
    end = parent_end(out)
    assert (end.event, end.error) == ("failed", "1 of 2 runs did not succeed: p/a failed")


def test_a_parent_whose_runs_all_succeeded_before_the_restore_ends_at_it() -> None:
    journal = broadcast_to("a", "b")
    for name, result in (("a", 1), ("b", 2)):
        report(journal.core, name, f"p/{name}", "succeeded", result=result)
    journal.keep()
    journal.records["p"].state = "blocked"  # a bus from before the fix left it waiting
    core = journal.restart()
    assert core.job("p") is None
    (parent,) = core.take_changes()[0]
    assert (parent.state, parent.result) == ("succeeded", {"p/a": 1, "p/b": 2})


def test_a_run_missing_from_the_journal_fails_the_parent() -> None:
    journal = broadcast_to("a")
    report(journal.core, "a", "p/a", "succeeded")
    journal.keep()
    journal.records["p"].state = "blocked"
    del journal.records["p/a"]  # vacuumed
    core = journal.restart()
    (parent,) = core.take_changes()[0]
    assert parent.state == "failed" and parent.result is None
    assert parent.errors[-1] == f"1 of 1 runs did not succeed: p/a {MISSING}"


def test_a_parent_journaled_without_its_runs_fails_at_restore() -> None:
    journal = broadcast_to("a")
    parent = journal.records["p"]
    parent.payload = msgspec.structs.replace(parent.payload, depends_on=None)
    core = journal.restart()
    assert core.job("p") is None and core.job("p/a") is not None
    (ended,) = core.take_changes()[0]
    assert (ended.state, ended.errors[-1]) == ("failed", unrecorded_error("p"))


def test_a_run_whose_scheduler_never_comes_back_ends_dead() -> None:
    journal = broadcast_to("a", "b")
    core = journal.restart(promised=WALL + 10)
    add(core, "b", size=1, now=100.0, held=[Held("p/b", 1)])
    report(core, "b", "p/b", "succeeded", now=101.0)
    core.tick(109.0, WALL)
    assert info(core, "p/a").holder == "a"  # a was promised its jobs until WALL + 10
    out = core.tick(110.0, WALL + 10)
    assert [e for e in events(out) if e in FINAL_EVENTS] == ["dead", "failed"]
    assert parent_end(out).error == "1 of 2 runs did not succeed: p/a dead"
    core.check_invariants()


def test_a_waiting_run_s_scheduler_is_known_again_after_a_restart() -> None:
    journal = broadcast_to("a", "b", started=False, start_deadline=1.0)
    report(journal.core, "b", "p/b", "started")
    journal.core.tick(2.0, WALL)  # a started nothing in time: p/a waits in the backlog for it
    assert info(journal.core, "p/a").state == "queued"
    journal.keep()
    core = journal.restart()
    a = core.scheduler("a")
    assert a is not None and not a.connected and core.next_deadline() == 100.0 + LEASE
    add(core, "b", size=1, now=100.0, held=[Held("p/b", 1)])
    report(core, "b", "p/b", "succeeded", now=101.0)
    assert assigns(add(core, "a", size=1, now=101.0)) == [("a", "p/a")]
    report(core, "a", "p/a", "succeeded", attempt=2, now=102.0)
    assert core.job("p") is None
    core = journal.restart()  # the same journal, but a never comes back: p/a ends dead
    add(core, "b", size=1, now=100.0, held=[Held("p/b", 1)])
    report(core, "b", "p/b", "succeeded", now=101.0)
    out = core.tick(100.0 + LEASE, WALL)
    assert parent_end(out).error == "1 of 2 runs did not succeed: p/a dead"
    core.check_invariants()


def test_a_resent_broadcast_gets_the_existing_job() -> None:
    core = new_core()
    add(core, "a")
    submit(core, job(job_id="p", broadcast=True))
    again = reply(submit(core, job(job_id="p", broadcast=True)))
    assert isinstance(again, Accepted) and (again.id, again.existing) == ("p", True)


def test_a_broadcast_runs_on_at_most_max_depends_schedulers(monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setattr(broadcast, "MAX_DEPENDS", 1)
    core = new_core()
    add(core, "a")
    add(core, "b")
    out = reply(submit(core, job(broadcast=True)))
    assert isinstance(out, Error) and out.field == "payload.broadcast"
    assert "2 schedulers serve task" in out.message and "at most 1" in out.message
