"""The dispatch core as schedulers come and go: leases, and a restart from the journal."""

from __future__ import annotations

from dispatch_helpers import (
    LEASE,
    WALL,
    add,
    assigns,
    events,
    info,
    job,
    new_core,
    report,
    sends,
    stops,
    stored_job,
    submit,
    submit_id,
)

from scheduler.policy.dispatch.decisions import (
    Ignored,
    LeaseExpired,
    Requeued,
)
from scheduler.policy.job import Job
from scheduler.protocol import Held, Report, Stop

# --- leases ----------------------------------------------------------------------------


def test_a_clean_close_releases_the_jobs_at_once() -> None:
    core = new_core()
    add(core, "a", size=10)
    submit(core, job(priority=7))
    submit(core, job(priority=2))
    add(core, "b", size=10)
    decisions = core.detach("a", clean=True, now=3.0, wall=WALL)
    requeued = [d for d in decisions if isinstance(d, Requeued)]
    assert [(d.job_id, d.scheduler, d.attempt) for d in requeued] == [
        ("j1", "a", 1),
        ("j0", "a", 1),
    ]
    assert events(decisions) == ["requeued", "requeued", "assigned", "assigned"]
    assert {d.assignment.attempt for d in sends(decisions)} == {2}
    assert assigns(decisions) == [("b", "j1"), ("b", "j0")]
    assert core.scheduler("a") is None


def test_a_broken_connection_keeps_its_jobs_until_the_lease_expires() -> None:
    core = new_core()
    add(core, "a", now=0.0)
    submit(core)
    core.heartbeat("a", 1, 0, 2.0)  # the lease now ends at 7
    add(core, "b", now=2.0)
    assert core.detach("a", clean=False, now=3.0, wall=WALL) == []
    snapshot = core.scheduler("a")
    assert snapshot is not None and not snapshot.connected and snapshot.outstanding == 1
    assert info(core, "j0").holder == "a"
    assert assigns(submit(core, now=3.0)) == [("b", "j1")]  # a disconnected one gets nothing
    assert core.next_deadline() == 2.0 + LEASE
    assert core.tick(6.9, WALL) == []
    core.heartbeat("b", 1, 0, 6.9)
    decisions = core.tick(7.0, WALL)
    assert decisions[0] == LeaseExpired("a", 1, connected=False)
    assert events(decisions) == ["requeued", "assigned"]
    assert [(d.assignment.id, d.assignment.attempt) for d in sends(decisions)] == [("j0", 2)]
    assert core.scheduler("a") is None


def test_a_silent_connected_scheduler_loses_its_jobs_and_its_connection() -> None:
    core = new_core()
    add(core, "a", now=0.0)
    submit(core)
    core.report("a", Report("started", "j0", 1), 4.0, WALL)  # a report renews the lease
    assert core.next_deadline() == 4.0 + LEASE
    decisions = core.tick(4.0 + LEASE, WALL)
    assert decisions[0] == LeaseExpired("a", 1, connected=True)
    assert info(core, "j0").state == "queued" and core.backlog() == ["j0"]
    assert core.next_deadline() is None


def test_an_idle_scheduler_that_disconnects_is_forgotten_at_once() -> None:
    core = new_core()
    add(core, "a")
    assert core.detach("a", clean=False, now=1.0, wall=WALL) == []
    assert core.scheduler("a") is None and core.next_deadline() is None


def test_reattaching_within_the_lease_keeps_what_it_still_holds() -> None:
    core = new_core()
    add(core, "a", size=5)
    for _ in range(4):
        submit(core)
    report(core, "a", "j0", "started")
    core.detach("a", clean=False, now=1.0, wall=WALL)
    core.cancel("j3", WALL)  # the Stop cannot reach it while it is away
    held = [Held("j0", 1), Held("j1", 1, done=True), Held("j3", 1), Held("j9", 1)]
    decisions = add(core, "a", size=5, now=2.0, held=held)
    # j2 was not listed: requeued at once, and (a being the only one) assigned again.
    assert stops(decisions) == [
        ("a", Stop("j9", 1, "the job is final or unknown")),
        ("a", Stop("j3", 1, "cancelled", kind="cancel")),
    ]
    assert [(d.job_id, d.reason) for d in decisions if isinstance(d, Requeued)] == [
        ("j2", "not held after reconnecting")
    ]
    assert [(d.assignment.id, d.assignment.attempt) for d in sends(decisions)] == [("j2", 2)]
    assert (info(core, "j0").state, info(core, "j0").holder) == ("running", "a")
    assert events(report(core, "a", "j1", "succeeded", now=2.0)) == ["succeeded"]  # its outbox
    assert events(report(core, "a", "j3", "cancelled", now=2.0)) == ["cancelled"]
    snapshot = core.scheduler("a")
    assert snapshot is not None and snapshot.connected and snapshot.lease_deadline == 2.0 + LEASE


def test_coming_back_after_the_lease_stops_every_held_attempt() -> None:
    core = new_core()
    add(core, "a")
    submit(core)
    submit(core)
    core.detach("a", clean=False, now=0.0, wall=WALL)
    add(core, "b", now=1.0)
    core.tick(LEASE, WALL)  # both to b as attempt 2
    report(core, "b", "j1", "succeeded", attempt=2)
    decisions = add(core, "a", now=9.0, held=[Held("j0", 1), Held("j1", 1, done=True)])
    assert stops(decisions) == [
        ("a", Stop("j0", 1, "the job was reassigned to b")),
        ("a", Stop("j1", 1, "the job is final or unknown")),
    ]
    (ignored,) = report(core, "a", "j0", "succeeded", attempt=1)  # its outbox: stale
    assert isinstance(ignored, Ignored)


def test_a_reattaching_scheduler_may_get_its_lost_job_back_as_a_new_attempt() -> None:
    core = new_core()
    add(core, "a")
    submit(core)
    decisions = add(core, "a", now=1.0, held=[])  # it lost the job (say, it restarted)
    assert [(d.assignment.id, d.assignment.attempt) for d in sends(decisions)] == [("j0", 2)]


# --- restart ---------------------------------------------------------------------------


def test_a_restarted_core_takes_back_the_journal_s_jobs() -> None:
    core = new_core()
    jobs = [
        stored_job("q", 0),
        stored_job("held", 1, state="running", holder="a", attempt=2, deliveries=2),
        stored_job("later", 2, attempt=1, not_before=WALL + 30),
        stored_job("odd", 3, state="assigned"),  # no holder: queued again
        stored_job("other", 4, state="assigned", holder="b", attempt=1),
        stored_job("also", 5, state="assigned", holder="a", attempt=1),
    ]
    core.restore(jobs, next_seq=10, now=100.0, wall=WALL)
    assert core.backlog() == ["q", "odd"]
    assert core.next_deadline() == 100.0 + LEASE
    assert info(core, "held").holder == "a"
    a = core.scheduler("a")
    assert a is not None and not a.connected and a.outstanding == 2
    decisions = add(core, "a", now=101.0, held=[Held("held", 2), Held("also", 1)])
    assert stops(decisions) == [] and assigns(decisions) == [("a", "q"), ("a", "odd")]
    assert events(report(core, "a", "held", "succeeded", attempt=2, now=101.0)) == ["succeeded"]
    decisions = core.tick(100.0 + LEASE, WALL)  # b never came back
    assert decisions[0] == LeaseExpired("b", 1, connected=False)
    assert [(d.assignment.id, d.assignment.attempt) for d in sends(decisions)] == [("other", 2)]
    assert core.next_deadline() == 101.0 + LEASE  # a's lease, then the held-back retry
    core.heartbeat("a", 0, 0, 129.0)
    assert core.next_deadline() == 100.0 + 30
    assert [d.assignment.id for d in sends(core.tick(130.0, WALL))] == ["later"]
    assert submit_id(core) == "j0"
    assert core.job("j0") is not None
    new = [j for j in core.take_changes()[0] if j.id == "j0"]
    assert new[0].seq == 10


def test_a_restart_promise_keeps_held_jobs_with_their_holder_until_its_deadline() -> None:
    core = new_core()
    jobs = [
        stored_job("held", 0, state="running", holder="a", attempt=1, deliveries=1),
        stored_job("waits", 1, state="assigned", holder="a", attempt=1, deliveries=1),
    ]
    core.restore(jobs, next_seq=2, now=100.0, wall=WALL, promised_until=WALL + 60)
    assert core.next_deadline() == 160.0  # not one lease from the restart
    assert core.tick(100.0 + LEASE, WALL + LEASE) == []
    assert info(core, "held").holder == "a"
    decisions = add(core, "a", now=130.0, held=[Held("held", 1), Held("waits", 1)])
    assert stops(decisions) == [] and assigns(decisions) == []
    assert events(report(core, "a", "held", "succeeded", now=131.0)) == ["succeeded"]


def test_a_past_restart_promise_gives_only_the_lease() -> None:
    core = new_core()
    jobs = [stored_job("held", 0, state="running", holder="a", attempt=1, deliveries=1)]
    core.restore(jobs, next_seq=1, now=100.0, wall=WALL, promised_until=WALL - 60)
    assert core.next_deadline() == 100.0 + LEASE
    decisions = core.tick(100.0 + LEASE, WALL + LEASE)
    assert decisions[0] == LeaseExpired("a", 1, connected=False)


def test_status_reads_like_the_latest_event() -> None:
    core = new_core()
    submit(core)
    assert core.tracks("j0") and not core.tracks("nope")
    assert core.status("nope", WALL) is None
    first = core.status("j0", WALL)
    assert first is not None and (first.event, first.state) == ("accepted", "queued")
    add(core, "a")
    report(core, "a", "j0", "started")
    started = core.status("j0", WALL)
    assert started is not None and started.event == "started"
    core.detach("a", clean=True, now=0.0, wall=WALL)
    requeued = core.status("j0", WALL)
    assert requeued is not None and requeued.event == "requeued"


def test_jobs_waiting_at_their_holder_when_the_bus_restarted_may_be_stolen() -> None:
    core = new_core()
    pinned = Job("pinned", job(priority=2, pin="a"), 2, WALL - 100)
    pinned.state, pinned.holder, pinned.attempt = "assigned", "a", 1
    jobs = [
        stored_job("runs", 0, state="running", holder="a", attempt=1, deliveries=1),
        stored_job("waits", 1, state="assigned", holder="a", attempt=1, deliveries=1),
        pinned,
    ]
    core.restore(jobs, next_seq=3, now=100.0, wall=WALL)
    add(core, "a", size=1, now=100.5, held=[Held("runs", 1), Held("waits", 1), Held("pinned", 1)])
    decisions = add(core, "b", size=1, now=101.0)
    assert [(name, stop.id, stop.kind) for name, stop in stops(decisions)] == [
        ("a", "waits", "steal")
    ]
    core.check_invariants()
