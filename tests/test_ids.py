"""How logs and ``monitor`` show a job id: a prefix ``jobs`` accepts, or the whole id."""

from scheduler.ids import SHORT_ID_LEN, short_id


def test_a_generated_id_is_shortened_and_any_other_id_is_whole() -> None:
    generated = "fedcba9876543210fedcba9876543210"
    assert short_id(generated) == generated[:SHORT_ID_LEN] == "fedcba987654"
    assert short_id(f"{generated}/vm-1") == f"{generated}/vm-1"
    assert short_id("report-2026-11") == "report-2026-11"
    assert short_id(generated.upper()) == generated.upper()
