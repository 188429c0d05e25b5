import json

import msgspec

from scheduler.protocol import JobEvent
from scheduler.tools.monitor import event_json, format_event

EVENT = JobEvent(
    event="timed_out",
    id="0123456789abcdef",
    priority=3,
    state="timed_out",
    time=1_800_000_000.25,
    runtime=5.0,
    scheduler="s1",
    attempt=2,
    evictions=1,
    wall_s=2.004,
    error="timed out after 2 s",
)


def test_a_line_says_what_happened_where() -> None:
    line = format_event(EVENT)
    for part in ("timed_out", "01234567", "p=3", "on=s1", "attempt=2", "evictions=1", "2.004s"):
        assert part in line


def test_json_lines_carry_the_documented_keys() -> None:
    fields = json.loads(event_json(EVENT))
    assert {"event", "id", "priority", "state", "scheduler", "time"} <= fields.keys()
    started = JobEvent(event="accepted", id="x", priority=0, state="queued", time=1.0, runtime=1.0)
    assert json.loads(event_json(started))["scheduler"] is None


def test_a_result_is_shown_shortened_and_whole_in_json() -> None:
    result = {"rows": list(range(100))}
    done = msgspec.structs.replace(EVENT, event="succeeded", state="succeeded", result=result)
    line = format_event(done)
    assert 'result={"rows": [0, 1, 2' in line and line.endswith("...")
    assert json.loads(event_json(done))["result"] == result


def test_a_skipped_firing_prints_like_any_event() -> None:
    why = "schedule tick: firing at 2027-01-15T08:00:00Z skipped: 1 earlier firings still running"
    skipped = JobEvent(
        event="skipped",
        id="tick@2027-01-15T08:00:00Z",
        priority=5,
        state="skipped",
        time=1_800_000_000.0,
        task="noop",
        error=why + " (max_instances 1)",
    )
    line = format_event(skipped)
    assert "skipped" in line and "p=5" in line and "(max_instances 1)" in line
    assert json.loads(event_json(skipped))["id"] == "tick@2027-01-15T08:00:00Z"


def test_a_line_names_the_job_as_jobs_commands_accept_it() -> None:
    generated = "0123456789abcdef0123456789abcdef"
    for job_id, shown in [
        (generated, "0123456789ab"),
        (f"{generated}/vm-1", f"{generated}/vm-1"),
        ("nightly-report", "nightly-report"),
    ]:
        line = format_event(msgspec.structs.replace(EVENT, id=job_id))
        assert line.split()[2] == shown


def test_progress_reads_as_a_percentage_and_output_line_by_line() -> None:
    running = msgspec.structs.replace(EVENT, state="running", error=None, wall_s=None)
    progress = msgspec.structs.replace(
        running, event="progress", progress=0.4, message="copying files"
    )
    assert format_event(progress).endswith("progress  0123456789abcdef  40% copying files")
    output = msgspec.structs.replace(running, event="output", output="one\ntwo\n")
    first, second = format_event(output).splitlines()
    assert first.endswith("output    0123456789abcdef | one") and second.endswith("| two")
