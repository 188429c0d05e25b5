from scheduler.producer.tracking import JobTracker
from scheduler.protocol import JobEvent
from scheduler.protocol_types import EventKind, JobState


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
        "task": "sleep",
        "state": "succeeded",
        "scheduler": "s1",
        "evictions": 1,
        "attempts": 1,
        "wait_s": 2.0,
        "run_s": 3.0,
        "wall_s": None,
        "exit_code": 0,
        "error": None,
        "traceback": None,
        "result": None,
    }


def test_a_record_starts_from_any_event_and_waits_are_zero_until_final() -> None:
    tracker = JobTracker()
    record = tracker.apply(event("started", "running", 5.0, scheduler="s2"))
    assert record.wait_s == 0.0
    record = tracker.apply(event("timed_out", "timed_out", 7.0, error="timeout", wall_s=1.9))
    assert (record.state, record.run_s, record.wall_s) == ("timed_out", 2.0, 1.9)


def test_a_record_keeps_the_task_and_its_result() -> None:
    tracker = JobTracker()
    tracker.apply(event("accepted", "queued", 1.0, task="render"))
    tracker.apply(event("started", "running", 2.0, task="render", scheduler="s1", attempt=1))
    record = tracker.apply(
        event("succeeded", "succeeded", 3.0, task="render", result={"pages": [1, 2]})
    )
    assert record.as_dict() == record.as_dict() | {
        "task": "render",
        "state": "succeeded",
        "result": {"pages": [1, 2]},
        "traceback": None,
        "error": None,
    }


def test_a_record_keeps_the_traceback_of_the_failure() -> None:
    tracker = JobTracker()
    tracker.apply(event("started", "running", 1.0, task="render", attempt=1))
    tb = "Traceback (most recent call last):\nValueError: bad\n"
    tracker.apply(
        event(
            "retrying",
            "queued",
            2.0,
            task="render",
            error="ValueError: bad",
            errors=["ValueError: bad"],
            traceback=tb,
        )
    )
    tracker.apply(event("started", "running", 3.0, task="render", attempt=2))
    record = tracker.apply(
        event("failed", "failed", 4.0, task="render", error="ValueError: bad", traceback=tb)
    )
    assert (record.state, record.error, record.traceback, record.result) == (
        "failed",
        "ValueError: bad",
        tb,
        None,
    )
    assert record.as_dict()["traceback"] == tb and record.as_dict()["task"] == "render"


def test_a_later_failure_without_an_exception_drops_the_old_traceback() -> None:
    tracker = JobTracker()
    tb = "Traceback (most recent call last):\nValueError: bad\n"
    tracker.apply(event("retrying", "queued", 1.0, error="ValueError: bad", traceback=tb))
    record = tracker.apply(event("dead", "dead", 2.0, error="timed out after 1 s"))
    assert (record.error, record.traceback) == ("timed out after 1 s", None)


def test_progress_and_output_events_leave_the_record_alone() -> None:
    tracker = JobTracker()
    tracker.apply(event("accepted", "queued", 100.0))
    tracker.apply(event("started", "running", 101.0, scheduler="s1", attempt=1))
    tracker.apply(event("progress", "running", 102.0, scheduler="s1", progress=0.5))
    tracker.apply(event("output", "running", 103.0, scheduler="s1", output="hi\n"))
    record = tracker.apply(event("succeeded", "succeeded", 105.0, scheduler="s1"))
    assert (record.run_s, record.wait_s) == (4.0, 1.0)
