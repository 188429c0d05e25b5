from scheduler.protocol import EventKind, JobEvent, JobState
from scheduler.tracking import JobTracker


def event(kind: EventKind, state: JobState, time: float, **extra: object) -> JobEvent:
    return JobEvent(
        event=kind,
        id="j1",
        priority=4,
        state=state,
        time=time,
        runtime=2.0,
        **extra,  # type: ignore[arg-type]
    )


def test_a_job_evicted_once_sums_its_run_and_wait_time() -> None:
    tracker = JobTracker()
    tracker.apply(event("accepted", "queued", 100.0))
    tracker.apply(event("assigned", "assigned", 100.1, scheduler="s1", attempt=1))
    tracker.apply(event("started", "running", 100.5, scheduler="s1", attempt=1))
    tracker.apply(event("evicted", "assigned", 101.5, scheduler="s1", attempt=1, evictions=1))
    assert not tracker.records["j1"].final
    tracker.apply(event("started", "running", 103.0, scheduler="s1", attempt=1, evictions=1))
    record = tracker.apply(event("succeeded", "succeeded", 105.0, scheduler="s1", exit_code=0))
    assert record.final
    assert record.run_s == 3.0
    assert record.wait_s == 2.0
    assert record.as_dict() | {"run_s": 3.0} == {
        "id": "j1",
        "priority": 4,
        "runtime": 2.0,
        "state": "succeeded",
        "scheduler": "s1",
        "evictions": 1,
        "attempts": 1,
        "wait_s": 2.0,
        "run_s": 3.0,
        "wall_s": None,
        "exit_code": 0,
        "error": None,
    }


def test_a_record_starts_from_any_event_and_waits_are_zero_until_final() -> None:
    tracker = JobTracker()
    record = tracker.apply(event("started", "running", 5.0, scheduler="s2"))
    assert record.wait_s == 0.0
    record = tracker.apply(event("timed_out", "timed_out", 7.0, error="timeout", wall_s=1.9))
    assert (record.state, record.run_s, record.wall_s) == ("timed_out", 2.0, 1.9)
