import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler import codec, protocol, protocol_schedules, protocol_types
from scheduler.codec import ProtocolError, decode_bus, decode_client, decode_payload, encode
from scheduler.protocol import (
    Accepted,
    Assign,
    Assignment,
    Error,
    Heartbeat,
    JobEvent,
    JobPayload,
    JobRequest,
    Register,
    Registered,
    Report,
    Retried,
    Stop,
)
from scheduler.protocol_queries import ListJobs, Retry


def test_v1_frames_decode_exactly_as_the_original_sent_them() -> None:
    assert decode_client('{"cmd": "register", "type": "producer"}') == Register(type="producer")
    request = decode_client('{"cmd": "job_request", "payload": {"priority": 3, "runtime": 5.5}}')
    assert request == JobRequest(payload=JobPayload(priority=3, runtime=5.5))


def test_v1_encoders_produce_the_original_bytes() -> None:
    payload = JobPayload(priority=3, runtime=0.5)
    assert codec.encode_v1_payload(payload) == '{"runtime": 0.5, "priority": 3}'
    assert codec.encode_v1_payload(JobPayload(priority=0, runtime=7.0)) == (
        '{"runtime": 7, "priority": 0}'
    )
    assert codec.encode_v1_register("scheduler") == '{"cmd": "register", "type": "scheduler"}'
    assert codec.encode_v1_job_request(payload) == (
        '{"cmd": "job_request", "payload": {"runtime": 0.5, "priority": 3}}'
    )


@pytest.mark.parametrize(
    "message",
    [
        Register(type="scheduler", protocol=2, name="s1", size=4, tasks=["sleep"]),
        JobRequest(payload=JobPayload(priority=0, runtime=1.5, timeout=3.0), ref=7),
        Report(event="succeeded", id="abc", attempt=2, exit_code=0, wall_s=0.1),
        Heartbeat(running=2, queued=5),
        Retry(ids=["abc", "abd"], ref=4),
        ListJobs(states=["failed"], task="add", since=1.5, prefix="ab", final=True),
    ],
)
def test_client_messages_round_trip(message: protocol.ClientMessage) -> None:
    assert decode_client(encode(message)) == message


@pytest.mark.parametrize(
    "message",
    [
        Registered(name="s1"),
        Accepted(id="abc", ref="r1"),
        Error(message="bad", field="payload.priority", ref=3),
        Assign(job=Assignment(id="abc", attempt=1, priority=2, runtime=0.5, evictions=1)),
        JobEvent(event="started", id="abc", priority=2, state="running", time=1.0, runtime=0.5),
        Retried(
            jobs=[JobEvent(event="retried", id="abc", priority=2, state="queued", time=1.0)],
            errors={"abd": "job abd succeeded"},
            ref=4,
        ),
    ],
)
def test_bus_messages_round_trip(message: protocol.BusMessage) -> None:
    assert decode_bus(encode(message)) == message


def test_a_retried_reply_always_says_its_errors_and_a_retry_needs_ids() -> None:
    empty = json.loads(encode(Retried(jobs=[])))
    assert empty == {"type": "retried", "jobs": [], "errors": {}, "ref": None}
    with pytest.raises(ProtocolError) as refused:
        decode_client('{"cmd": "retry", "ids": []}')
    assert refused.value.field == "ids"
    with pytest.raises(ProtocolError) as refused:
        decode_client('{"cmd": "list_jobs", "since": -1}')
    assert refused.value.field == "since"


def test_defaults_are_left_out_of_the_payload() -> None:
    assert json.loads(encode(JobRequest(payload=JobPayload(priority=1, runtime=2.0)))) == {
        "cmd": "job_request",
        "payload": {"priority": 1, "runtime": 2.0},
    }


@pytest.mark.parametrize(
    ("frame", "field", "words"),
    [
        ("not json", None, "not valid JSON"),
        (
            '{"cmd": "job_request", "payload": {"priority": 11, "runtime": 1}}',
            "payload.priority",
            "<= 10",
        ),
        (
            '{"cmd": "job_request", "payload": {"priority": -1, "runtime": 1}}',
            "payload.priority",
            ">= 0",
        ),
        (
            '{"cmd": "job_request", "payload": {"priority": 1, "runtime": -1}}',
            "payload.runtime",
            "> 0",
        ),
        (
            '{"cmd": "job_request", "payload": {"priority": 1, "runtime": 0}}',
            "payload.runtime",
            "> 0",
        ),
        (
            '{"cmd": "job_request", "payload": {"priority": 1, "runtime": 1e999}}',
            "payload.runtime",
            "",
        ),
        (
            '{"cmd": "job_request", "payload": {"priority": "1", "runtime": 1}}',
            "payload.priority",
            "int",
        ),
        (
            '{"cmd": "job_request", "payload": {"priority": 1.5, "runtime": 1}}',
            "payload.priority",
            "int",
        ),
        ('{"cmd": "job_request", "payload": {"priority": 1, "args": 5}}', "payload.args", ""),
        (
            '{"cmd": "job_request", "payload": {"priority": 1, "runtime": 1, "x": 2}}',
            "payload",
            "`x`",
        ),
        ('{"cmd": "launch_missiles"}', "cmd", "unknown cmd"),
        ('{"type": "producer"}', None, "`cmd`"),
        ('{"cmd": "register", "type": "admin"}', "type", ""),
        ("[1, 2]", None, "object"),
        ('{"cmd": "register", "type": "scheduler", "size": 0}', "size", ">= 1"),
        (
            '{"cmd": "register", "type": "scheduler", "priorities": {"render": 11}}',
            "priorities",
            "<= 10",
        ),
    ],
)
def test_bad_frames_name_the_field_and_the_rule(frame: str, field: str | None, words: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(frame)
    assert caught.value.field == field
    assert words in caught.value.message
    assert caught.value.to_error(ref=1) == Error(message=caught.value.message, field=field, ref=1)


def test_ref_of_recovers_the_ref_of_a_bad_frame() -> None:
    assert codec.ref_of('{"cmd": "job_request", "ref": "r9", "payload": {}}') == "r9"
    assert codec.ref_of('{"ref": true}') is None
    assert codec.ref_of("garbage") is None
    assert codec.ref_of("[1]") is None


def test_payload_decoder_validates_the_bare_v1_payload() -> None:
    assert decode_payload('{"priority": 2, "runtime": 1}') == JobPayload(priority=2, runtime=1.0)
    with pytest.raises(ProtocolError, match="priority"):
        decode_payload('{"priority": 99, "runtime": 1}')


def test_a_job_may_leave_its_priority_to_its_task_and_a_v1_frame_still_carries_one() -> None:
    request = decode_client('{"cmd": "job_request", "payload": {"task": "render"}}')
    assert isinstance(request, JobRequest) and request.payload.priority is None
    assert json.loads(codec.encode_v1_payload(JobPayload(runtime=2.0))) == {
        "runtime": 2,
        "priority": protocol_types.DEFAULT_PRIORITY,
    }
    register = '{"cmd": "register", "type": "scheduler", "protocol": 2, "priorities": {"a": 3}}'
    assert decode_client(register) == Register(type="scheduler", protocol=2, priorities={"a": 3})


def test_decode_bus_rejects_garbage() -> None:
    with pytest.raises(ProtocolError):
        decode_bus('{"type": "nope"}')


@given(st.text(max_size=200) | st.binary(max_size=200))
def test_any_client_frame_decodes_or_raises_protocol_error(frame: str | bytes) -> None:
    try:
        decode_client(frame)
    except ProtocolError as exc:
        assert exc.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(
    st.fixed_dictionaries(
        {"cmd": st.sampled_from(["register", "job_request", "report", "heartbeat", "x"])},
        optional={
            "type": json_values,
            "payload": st.fixed_dictionaries(
                {}, optional={"priority": json_values, "runtime": json_values, "task": json_values}
            ),
            "event": json_values,
            "id": json_values,
            "attempt": json_values,
            "ref": json_values,
        },
    )
)
def test_structured_garbage_decodes_valid_or_names_a_field(frame: dict[str, object]) -> None:
    try:
        message = decode_client(json.dumps(frame))
    except ProtocolError as exc:
        assert exc.message
        return
    if isinstance(message, JobRequest):
        priority = message.payload.priority
        assert priority is None or 0 <= priority <= 10
        runtime = message.payload.runtime
        assert runtime is None or 0 < runtime <= protocol_types.MAX_RUNTIME_S


@given(st.text(max_size=200) | st.binary(max_size=200))
def test_any_bus_frame_decodes_or_raises_protocol_error(frame: str | bytes) -> None:
    try:
        decode_bus(frame)
    except ProtocolError as exc:
        assert exc.message


def test_restarting_and_submit_warnings_round_trip() -> None:
    restarting = protocol.Restarting(keep_s=60.0)
    assert encode(restarting) == '{"type":"restarting","keep_s":60.0}'
    assert decode_bus(encode(restarting)) == restarting
    with pytest.raises(ProtocolError, match="keep_s"):
        decode_bus('{"type": "restarting", "keep_s": -1}')
    accepted = Accepted(id="a", warning='no connected scheduler serves task "x"')
    assert decode_bus(encode(accepted)) == accepted
    assert "warning" not in encode(Accepted(id="a"))


def fill(template: str, value: object) -> str:
    """``template`` with each ``@`` replaced by ``value``."""
    return template.replace("@", str(value))


REPORT = '{"cmd": "report", "event": "succeeded", "id": "j", "attempt": 1'


@pytest.mark.parametrize(
    ("frame", "field", "words"),
    [
        (REPORT + fill(', "evictions": @}', 2**70), "evictions", "Expected `int` <= 2147483647"),
        (REPORT + fill(', "exit_code": @}', -(2**63)), "exit_code", ">= -2147483648"),
        (REPORT + fill(', "max_rss_kb": @}', 2**64), "max_rss_kb", "<= 9007199254740991"),
        (REPORT.replace('"attempt": 1', fill('"attempt": @', 2**63)) + "}", "attempt", "<="),
        (fill('{"cmd": "heartbeat", "running": @}', 2**31), "running", "<= 2147483647"),
        (fill('{"cmd": "heartbeat", "queued": @}', 2**70), "queued", "<= 2147483647"),
        (fill('{"cmd": "stats", "ref": @}', 2**53), "ref", "<= 9007199254740991"),
        (
            fill('{"cmd": "register", "type": "scheduler", "protocol": 2, "size": @}', 2**64),
            "size",
            "<=",
        ),
        (
            fill(
                '{"cmd": "register", "type": "scheduler", "protocol": 2,'
                ' "held": [{"id": "j", "attempt": @}]}',
                2**40,
            ),
            "held.0.attempt",
            "<= 2147483647",
        ),
        (
            fill('{"cmd": "job_request", "payload": {"max_retries": @}}', 2**70),
            "payload.max_retries",
            "<=",
        ),
        (REPORT + ', "wall_s": 1e999}', "wall_s", "out of range"),
        (REPORT + ', "cpu_s": -1e999}', "cpu_s", "out of range"),
        ('{"cmd": "vacuum", "older_than_s": 1e400}', "older_than_s", "out of range"),
        (REPORT + ', "wall_s": NaN}', None, "not valid JSON"),
        (REPORT + ', "wall_s": Infinity}', None, "not valid JSON"),
    ],
)
def test_every_number_on_the_wire_is_bounded_and_finite(
    frame: str, field: str | None, words: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(frame)
    assert caught.value.field == field
    assert words in caught.value.message
    if field is not None:
        assert caught.value.message.startswith(f"{field}: ")


DEEP = "[" * 1000 + "]" * 1000


@pytest.mark.parametrize(
    "frame",
    [
        fill('{"cmd": "job_request", "payload": {"runtime": 1, "args": @}}', DEEP),
        REPORT + fill(', "result": @}', DEEP),
        fill('{"cmd": "submit_many", "jobs": [@]}', DEEP),
        fill('{"cmd": "watch", "ids": @}', DEEP),
        fill('{"cmd": "register", "type": "producer", "name": @}', DEEP),
        fill('{"cmd": "job_request", "ref": @, "protocol": 2}', DEEP),
        fill('{"cmd": "stats", "unknown": @}', DEEP),
        "[" * 100_000,
        '{"x": ' * 5000,
    ],
)
def test_deep_nesting_anywhere_is_a_protocol_error(frame: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(frame)
    assert "nesting" in caught.value.message or "Expected" in caught.value.message
    assert codec.ref_of(frame) is None
    assert codec.says_v2(frame) is False


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ('{"cmd": "job_request", "payload": {"runtime": 1, "args": @}}', "payload.args"),
        (REPORT + ', "result": @}', "result"),
    ],
)
def test_args_and_result_nest_at_most_max_nesting_levels(frame: str, field: str) -> None:
    depth = protocol_types.MAX_NESTING
    decode_client(fill(frame, "[" * depth + "]" * depth))
    with pytest.raises(ProtocolError) as caught:
        decode_client(fill(frame, "[" * (depth + 1) + "]" * (depth + 1)))
    assert caught.value.field == field
    assert caught.value.message == f"{field}: nesting deeper than {depth} levels"
    deep: object = {}
    for _ in range(depth):
        deep = {"k": [deep]} if isinstance(deep, dict) else deep
    with pytest.raises(ValueError, match="nesting deeper"):
        JobPayload(runtime=1.0, args={"shallow": "[" * 5, "deep": deep})


def test_ref_of_and_says_v2_survive_deep_nesting_elsewhere() -> None:
    frame = fill('{"ref": 7, "protocol": 2, "x": @}', ("[" * 80 + "]" * 80))
    assert (codec.ref_of(frame), codec.says_v2(frame)) == (7, True)
    assert codec.ref_of(fill('{"ref": @}', 2**60)) is None
    assert codec.says_v2('{"protocol": true}') is False


def test_payload_and_bus_decoders_refuse_deep_nesting() -> None:
    with pytest.raises(ProtocolError, match="nesting"):
        decode_payload(fill('{"runtime": 1, "args": @}', DEEP))
    with pytest.raises(ProtocolError, match="nesting"):
        decode_bus(fill('{"type": "event", "result": @}', DEEP))


@pytest.mark.parametrize(
    ("kind", "reason"), [("cancel", "cancelled"), ("steal", "stolen"), ("drop", "replaced")]
)
def test_stop_kinds_round_trip_with_their_reason(kind: protocol.StopKind, reason: str) -> None:
    stop = Stop("j", 2, reason, kind=kind)
    assert json.loads(encode(stop)) == {
        "type": "stop",
        "id": "j",
        "attempt": 2,
        "reason": reason,
        "kind": kind,
    }
    assert decode_bus(encode(stop)) == stop


def test_a_stop_without_a_kind_is_a_drop() -> None:
    """The default keeps the wire format: a frame from before ``kind`` still decodes."""
    stop = decode_bus('{"type": "stop", "id": "j", "attempt": 1, "reason": "lease lost"}')
    assert stop == Stop("j", 1, "lease lost", kind="drop")


def test_an_unknown_stop_kind_is_refused_naming_the_field() -> None:
    with pytest.raises(ProtocolError, match="kind") as caught:
        decode_bus('{"type": "stop", "id": "j", "attempt": 1, "reason": "x", "kind": "pause"}')
    assert caught.value.field == "kind"


class _OldStop(msgspec.Struct, frozen=True, tag_field="type", tag="stop"):
    """A ``stop`` as schedulers from before ``kind`` decode it."""

    id: str
    attempt: int
    reason: str


def test_schedulers_from_before_the_kind_still_read_the_reason() -> None:
    frame = encode(Stop("j", 1, "stolen", kind="steal"))
    assert msgspec.json.decode(frame, type=_OldStop) == _OldStop("j", 1, "stolen")


@pytest.mark.parametrize("timing", ['"delay": 5', '"run_at": 1900000000'])
def test_a_job_with_dependencies_takes_no_time(timing: str) -> None:
    payload = '{"runtime": 1, "depends_on": ["a"], ' + timing + "}"
    frame = '{"cmd": "job_request", "payload": ' + payload + "}"
    field = timing.split('"')[1]
    with pytest.raises(ProtocolError) as caught:
        decode_client(frame)
    assert caught.value.field == f"payload.{field}"
    assert "depends_on runs when its dependencies allow" in caught.value.message


SPEC = protocol_schedules.ScheduleSpec(
    name="nightly", task="report", cron="0 3 * * *", tz="Europe/Berlin"
)


@pytest.mark.parametrize(
    "message",
    [
        protocol_schedules.ScheduleAdd(schedule=SPEC, ref=1),
        protocol_schedules.ScheduleChange(action="trigger", name="nightly", ref="r"),
        protocol_schedules.ScheduleQuery(query="next", name="nightly", count=3),
        Register(type="scheduler", protocol=2, name="s1", tasks=["report"], schedules=[SPEC]),
    ],
)
def test_schedule_commands_round_trip(message: protocol.ClientMessage) -> None:
    assert decode_client(encode(message)) == message


def test_the_schedules_reply_round_trips() -> None:
    info = protocol_schedules.ScheduleInfo(
        spec=SPEC, paused=True, last_job="nightly@x", last_fire=2.0
    )
    reply = protocol_schedules.Schedules(schedules=[info], times=[1.0, 2.0], message="ok", ref=4)
    assert decode_bus(encode(reply)) == reply


@pytest.mark.parametrize(
    ("schedule", "field", "words"),
    [
        ({"name": "a@b", "task": "t", "every": 1}, "schedule.name", "regex"),
        ({"name": "a b", "task": "t", "every": 1}, "schedule.name", "regex"),
        ({"name": "a", "task": "t", "every": 0}, "schedule.every", "> 0"),
        ({"name": "a", "task": "t", "every": 1, "jitter": -1}, "schedule.jitter", ">= 0"),
        ({"name": "a", "task": "t", "every": 1, "max_instances": 0}, "schedule.max_instances", ""),
        ({"name": "a", "task": "t", "every": 1, "when": 3}, "schedule", "`when`"),
        ({"name": "x" * 151, "task": "t", "every": 1}, "schedule.name", "length"),
    ],
)
def test_bad_schedules_name_the_field(schedule: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(json.dumps({"cmd": "schedule_add", "schedule": schedule}))
    assert caught.value.field == field
    assert words in caught.value.message


@given(
    st.fixed_dictionaries(
        {"cmd": st.sampled_from(["schedule_add", "schedule_change", "schedule_query"])},
        optional={
            "schedule": st.fixed_dictionaries(
                {"name": json_values, "task": json_values},
                optional={"every": json_values, "cron": json_values, "tz": json_values},
            ),
            "action": json_values,
            "query": json_values,
            "name": json_values,
            "count": json_values,
        },
    )
)
def test_schedule_garbage_decodes_valid_or_names_a_field(frame: dict[str, object]) -> None:
    try:
        message = decode_client(json.dumps(frame))
    except ProtocolError as exc:
        assert exc.message
        return
    if isinstance(message, protocol_schedules.ScheduleQuery):
        assert 1 <= message.count <= protocol_schedules.MAX_FIRE_COUNT
