"""The per-job invariants of the dispatch core, checked (see the table in
:mod:`scheduler.policy.dispatch.dispatcher`). Raises AssertionError naming the job."""

from __future__ import annotations

from scheduler.policy.dispatch.lifecycle import Lifecycle
from scheduler.policy.job import Job


def check_invariants(core: Lifecycle) -> None:
    """Assert every invariant of every tracked job and every known scheduler."""
    waiting, held_back = core.backlog.members()
    queued = set(waiting)
    assert len(queued) == len(waiting), "a job waits twice in the backlog"
    assert held_back <= core.jobs.keys(), "a hold-back names an untracked job"
    assert core.cancelling <= core.jobs.keys(), "a cancel names an untracked job"
    timed, misfire = core.timers.members()
    assert misfire <= core.jobs.keys(), "a misfire deadline names an untracked job"
    _check_dependencies(core)
    for job in core.jobs.values():
        assert (job.id in timed) == (job.state == "scheduled"), f"job {job.id}: timed"
        if job.state == "scheduled":
            _check_scheduled(core, job, job.id in queued, job.id in held_back)
        elif job.state == "blocked":
            _check_blocked(core, job, job.id in queued or job.id in held_back)
        elif job.holder is None:
            _check_queued(core, job, job.id in queued, job.id in held_back)
        else:
            _check_held(core, job, job.id in queued or job.id in held_back)
    _check_schedulers(core)


def _check_dependencies(core: Lifecycle) -> None:
    """A job waits for dependencies exactly while it is blocked, only for tracked jobs,
    and the index of dependents is the exact reverse."""
    deps = core.deps
    blocked = {job.id for job in core.jobs.values() if job.state == "blocked"}
    assert deps.waiting.keys() == blocked, "waiting for dependencies differs from blocked"
    assert deps.results.keys() <= core.jobs.keys(), "results kept for an untracked job"
    assert deps.outcomes.keys() <= blocked, "run outcomes kept for a job not blocked"
    reverse: dict[str, set[str]] = {}
    for job_id, waits in deps.waiting.items():
        assert waits, f"blocked job {job_id} waits for nothing"
        assert waits <= core.jobs.keys(), f"blocked job {job_id} waits for an untracked job"
        for dep_id in waits:
            reverse.setdefault(dep_id, set()).add(job_id)
    assert reverse == deps.dependents, "dependents are not the reverse of waiting"


def _check_blocked(core: Lifecycle, job: Job, booked: bool) -> None:
    """A blocked job has no holder, no seat, no place in the backlog, no steal or cancel."""
    where = f"blocked job {job.id}"
    assert job.holder is None, f"{where} is held by {job.holder}"
    assert not booked, f"{where} is in the backlog"
    assert job.id not in core.seats, f"{where} has a seat"
    assert job.id not in core.steals.stealable, f"{where} may be stolen"
    assert job.id not in core.cancelling, f"{where} is being cancelled"


def _check_queued(core: Lifecycle, job: Job, waits: bool, held_back: bool) -> None:
    """A job without a holder is queued: it waits in the backlog (under its own seq)
    or is held back for a retry, and nothing else books it."""
    where = f"queued job {job.id}"
    assert job.state == "queued", f"{where} is {job.state}"
    assert waits != held_back, f"{where}: in the backlog {waits}, held back {held_back}"
    assert job.id not in core.seats, f"{where} has a seat"
    assert job.id not in core.steals.stealable, f"{where} may be stolen"
    assert core.steals.thief(job.id) is None, f"{where} is being stolen"
    assert job.id not in core.cancelling, f"{where} is being cancelled"


def _check_scheduled(core: Lifecycle, job: Job, waits: bool, held_back: bool) -> None:
    """A scheduled job waits for its time only: no holder, backlog, hold-back or seat."""
    where = f"scheduled job {job.id}"
    assert job.holder is None and not waits and not held_back, f"{where} is booked"
    assert job.id not in core.seats, f"{where} has a seat"
    assert job.id not in core.cancelling, f"{where} is being cancelled"


def _check_held(core: Lifecycle, job: Job, waits: bool) -> None:
    """A held job is assigned (its seat not started) or running (started), in its
    holder's books only; it may be stolen or being stolen only while assigned at a v2
    scheduler, and an attempt at a v1 scheduler expires."""
    where = f"{job.state} job {job.id} at {job.holder}"
    assert job.holder is not None
    s = core.registry.by_name.get(job.holder)
    assert s is not None and job.id in s.held, f"{where}: not in its holder's books"
    assert job.state in ("assigned", "running"), f"{where}: held in this state"
    started = core.seats[job.id].started is not None
    assert started == (job.state == "running"), f"{where}: seat started {started}"
    assert not waits, f"{where}: also in the backlog"
    stolen = job.id in core.steals.stealable or core.steals.thief(job.id) is not None
    assert not stolen or (s.reports and job.state == "assigned"), f"{where}: stealable"
    assert job.id not in core.steals.stealable or core.steals.thief(job.id) is None, where
    pin = job.payload.pin
    assert pin is None or (job.holder == pin and not stolen), f"{where}: pinned to {pin}"
    v1 = (job.id, job.attempt) in core.backlog.v1_attempts()
    assert s.reports or v1, f"{where}: a v1 attempt that never expires"


def _check_schedulers(core: Lifecycle) -> None:
    """Each scheduler's books match its jobs: held ids, slots, kept steal slots."""
    held: set[str] = set()
    thieves = list(core.steals.thieves().values())
    for s in core.registry:
        for job_id in s.held:
            assert core.jobs[job_id].holder == s.name, f"{s.name} books {job_id} of another"
        seats = [core.seats[job_id] for job_id in s.held]
        busy = sum(seat.started is not None for seat in seats)
        assert (s.slots.busy, s.slots.pending) == (busy, len(seats) - busy), s.name
        assert s.slots.incoming == thieves.count(s.name), f"{s.name}: kept steal slots"
        held |= s.held
    assert held == core.seats.keys(), "seats differ from the held jobs"
    assert {t for t in thieves if core.registry.by_name.get(t) is None} == set(), "a gone thief"
