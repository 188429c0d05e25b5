import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import BusProcess, Commands, unit, wait_until

from scheduler.bus.server import BusServer
from scheduler.producer.cli import _job_text, _parse_args, cli
from scheduler.producer.client import ProducerClient
from scheduler.producer.follower import _outcome_text
from scheduler.producer.tracking import JobRecord
from scheduler.producer.workload import JobMaker, Span, parse_span, periods
from scheduler.protocol import JobPayload


@pytest.mark.parametrize(
    ("text", "span"),
    [("3-15", Span(3, 15)), ("0.1-0.5", Span(0.1, 0.5)), ("2", Span(2, 2)), (" 1-1 ", Span(1, 1))],
)
def test_spans_parse(text: str, span: Span) -> None:
    assert parse_span(text) == span


@pytest.mark.parametrize(("text", "words"), [("a-b", "LO-HI"), ("5-1", "exceed"), ("", "LO-HI")])
def test_bad_spans_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_span(text)


def test_integral_spans_draw_integers_like_the_original() -> None:
    rng = random.Random(1)
    assert all(isinstance(Span(3, 15).draw(rng), int) for _ in range(20))
    assert all(0.1 <= Span(0.1, 0.5).draw(rng) <= 0.5 for _ in range(20))


def test_job_maker_names_jobs_with_the_prefix() -> None:
    maker = JobMaker(Span(1, 2), Span(0, 10), None, random.Random(2), id_prefix="batch")
    payload = maker.next(7)
    assert payload.job_id == "batch-7"
    assert payload.priority is not None and 0 <= payload.priority <= 10


def test_job_maker_gives_every_job_the_task_and_its_args() -> None:
    maker = JobMaker(Span(1, 2), Span(0, 10), None, random.Random(2), task="add", args={"a": 1})
    payload = maker.next(0)
    assert (payload.task, payload.args) == ("add", {"a": 1})
    assert JobMaker(Span(1, 2), Span(0, 10), None, random.Random(2)).next(0).task == "sleep"


@pytest.mark.parametrize(
    ("text", "args"),
    [
        (None, None),
        ('{"a": 1, "b": [2]}', {"a": 1, "b": [2]}),
        ("[]", []),
        (" [1, null] ", [1, None]),
    ],
)
def test_args_are_a_json_object_or_array(text: str | None, args: object) -> None:
    assert _parse_args(text) == args


def test_the_log_line_ends_with_the_error_or_the_result_cut_short() -> None:
    record = JobRecord("j1", 1, None, "double")
    assert _outcome_text(record) == ""
    record.result = {"n": 4}
    assert _outcome_text(record) == ' -> {"n": 4}'
    record.result = "x" * 500
    text = _outcome_text(record)
    assert text.startswith(' -> "xxx') and text.endswith("...") and len(text) < 250
    record.error = "ValueError: bad"
    assert _outcome_text(record) == ": ValueError: bad"


def test_gaussian_periods_never_drop_below_5_ms() -> None:
    waits = periods(0.0, True, 1.0, random.Random(3))
    assert min(next(waits) for _ in range(200)) >= 0.005
    assert next(periods(2.0, False, 1.0, random.Random(3))) == 2.0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--wait"], "--wait needs --count"),
        (["--json"], "--json needs --wait"),
        (["--v1", "--count", "1", "--wait"], "--v1 producers never read"),
        (["--priority", "0-11"], "within 0-10"),
        (["--runtime", "0-1"], "must be > 0"),
        (["--runtime", "x"], "not LO-HI"),
        (["--bulk"], "--bulk needs --count"),
        (["--count", "0"], "--count"),
        (["--args", "{"], "Invalid value for --args: must be a JSON object or array"),
        (["--args", "not json"], "Invalid value for --args: must be a JSON object or array"),
        (["--args", "3"], "Invalid value for --args: must be a JSON object or array"),
        (["--args", '"text"'], "Invalid value for --args: must be a JSON object or array"),
        (["--args", "null"], "Invalid value for --args: must be a JSON object or array"),
        (["--v1", "--task", "x"], "--v1 jobs are sleep jobs: no --task or --args"),
        (["--v1", "--args", "[1]"], "--v1 jobs are sleep jobs: no --task or --args"),
        (["--v1", "--after", "a"], "--v1 jobs are plain jobs: no --after or --broadcast"),
        (["--v1", "--broadcast"], "--v1 jobs are plain jobs: no --after or --broadcast"),
        (["--pass-results"], "--pass-results needs --after"),
    ],
)
def test_bad_options_get_clear_errors(args: list[str], words: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert words in result.output


def test_an_unreachable_bus_is_a_clear_error() -> None:
    result = CliRunner().invoke(
        cli, ["--bus", "ws://127.0.0.1:9", "--count", "1", "--v1", "-p", "0"]
    )
    assert result.exit_code == 1
    assert "ws://127.0.0.1:9" in result.output


def test_help_explains_the_original_flags() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    flags = ("--period", "--gauss", "--sigma", "--count", "--wait", "--json", "--v1", "--task")
    for flag in (*flags, "--args"):
        assert flag in result.output


@pytest.mark.timeout(60)
async def test_a_task_with_args_runs_and_its_result_is_printed(
    bus: BusServer, commands: Commands
) -> None:
    await commands.start(
        "scheduler.worker", "--tasks", "tests/sample_tasks.py", "--bus", bus.url, "--name", "w1"
    )
    await wait_until(lambda: "w1" in bus.scheduler_names(), 20 * unit(), "w1 registers")
    code, stdout = await commands.run(
        "scheduler.producer",
        "--bus",
        bus.url,
        "--count",
        "1",
        "-p",
        "0",
        "--task",
        "double",
        "--args",
        "[2]",
        "--wait",
        "--json",
        timeout=30 * unit(),
    )
    assert code == 0, stdout
    (line,) = stdout.splitlines()
    job = json.loads(line)
    assert (job["task"], job["state"], job["result"], job["traceback"]) == (
        "double",
        "succeeded",
        4,
        None,
    )


def test_jobs_of_a_task_leave_the_priority_to_it_unless_one_is_given() -> None:
    maker = JobMaker(Span(1, 2), None, None, random.Random(3), task="nap")
    assert maker.next(0).priority is None
    given = JobMaker(Span(1, 2), Span(4, 4), None, random.Random(3), task="nap")
    assert given.next(0).priority == 4


def test_jobs_of_a_task_send_no_runtime_unless_one_is_given() -> None:
    assert JobMaker(None, None, None, random.Random(3), task="add").next(0).runtime is None
    assert _job_text(JobPayload(task="add")) == "task add"
    sleep = JobPayload(priority=3, runtime=1.5)
    assert _job_text(sleep) == "task sleep priority 3 runtime 1.5s"


async def test_a_producer_run_again_with_its_ids_and_seed_gets_its_jobs_back(
    commands: Commands, tmp_path: Path
) -> None:
    """A producer that sends its submissions again (after a bus crash lost the replies,
    say) gets its jobs, final ones included; only a different job under an id conflicts."""
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    await commands.start("scheduler.test_scheduler", "--bus", bus.url, "-s", "3")
    run = ("scheduler.producer", "--bus", bus.url, "--count", "3", "-p", "0", "--runtime",
           "0.1-0.3", "--id-prefix", "cli", "--wait", "--json", "--seed")  # fmt: skip
    first = await commands.run(*run, "7", timeout=30 * unit())
    again = await commands.run(*run, "7", timeout=30 * unit())
    assert first[0] == again[0] == 0, (first, again)
    states = [sorted((j["id"], j["state"]) for j in map(json.loads, out.splitlines()))
              for _, out in (first, again)]  # fmt: skip
    assert states[0] == states[1] == [(f"cli-{i}", "succeeded") for i in range(3)]
    code, _ = await commands.run(*run, "8", timeout=30 * unit())
    assert code == 1  # other runtimes under the same ids: a conflict, as on_conflict says
    async with ProducerClient(bus.url, token=bus.token("producer")) as producer:
        watching = await producer.watch([f"cli-{i}" for i in range(3)])
        assert [e.attempt for e in watching.jobs] == [1, 1, 1]  # each job ran once
