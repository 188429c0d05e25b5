import random

import pytest
from click.testing import CliRunner

from scheduler.producer import JobMaker, Span, cli, parse_span, periods


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
    assert 0 <= payload.priority <= 10


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
    for flag in ("--period", "--gauss", "--sigma", "--count", "--wait", "--json", "--v1"):
        assert flag in result.output
