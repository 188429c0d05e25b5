"""The bus's metrics without sockets: what each job event changes, the figures read at
scrape time, and the core's tally they come from."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from scheduler.bus import metrics as metrics_module
from scheduler.bus.metrics import BusMetrics, LiveFigures
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.protocol import JobEvent, JobPayload
from scheduler.protocol_types import EventKind, JobState

ID = "a" * 32


def event(kind: EventKind, state: JobState, priority: int = 2, **fields: object) -> JobEvent:
    return JobEvent(kind, ID, priority, state, 1.0e9, task="sleep", **fields)  # type: ignore[arg-type]


def metrics(figures: LiveFigures | None = None) -> BusMetrics:
    return BusMetrics(lambda: figures or LiveFigures({}, 0, 0), lambda job_id: True)


def value(m: BusMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_the_wait_runs_from_queued_to_started_by_priority() -> None:
    m = metrics()
    m.event(event("accepted", "queued"), now=10.0)
    m.event(event("assigned", "assigned"), now=11.0)
    m.event(event("started", "running"), now=12.5)
    assert value(m, "schedbus_job_wait_seconds_count", priority="2") == 1
    assert value(m, "schedbus_job_wait_seconds_sum", priority="2") == 2.5
    assert value(m, "schedbus_job_events_total", event="started", task="sleep") == 1


def test_an_eviction_restarts_the_wait_and_is_counted() -> None:
    m = metrics()
    m.event(event("accepted", "queued"), now=0.0)
    m.event(event("started", "running"), now=1.0)
    m.event(event("evicted", "queued"), now=5.0)
    m.event(event("started", "running"), now=5.5)
    assert value(m, "schedbus_evictions_total") == 1
    assert value(m, "schedbus_job_wait_seconds_sum", priority="2") == 1.5


def test_a_start_without_a_known_queue_time_observes_no_wait() -> None:
    m = metrics()
    m.event(event("started", "running"), now=3.0)
    assert value(m, "schedbus_job_wait_seconds_count", priority="2") is None


def test_an_attempt_that_ran_observes_its_run_time_and_a_final_event_forgets_the_job() -> None:
    m = metrics()
    m.event(event("accepted", "queued", priority=7), now=0.0)
    m.event(event("cancelled", "cancelled", priority=7), now=1.0)
    m.event(event("started", "running", priority=7), now=2.0)
    assert value(m, "schedbus_job_wait_seconds_count", priority="7") is None
    m.event(event("succeeded", "succeeded", priority=7, wall_s=0.75), now=3.0)
    m.event(event("failed", "failed", priority=7), now=4.0)  # no wall_s: not observed
    assert value(m, "schedbus_job_run_seconds_count", priority="7") == 1
    assert value(m, "schedbus_job_run_seconds_sum", priority="7") == 0.75


def test_queue_times_of_jobs_gone_without_a_final_event_are_forgotten() -> None:
    tracked = {"a" * 32}
    m = BusMetrics(lambda: LiveFigures({}, 0, 0), tracked.__contains__)
    m.event(event("accepted", "queued"), now=0.0)
    m.event(JobEvent("accepted", "b" * 32, 1, "queued", 0.0), now=0.0)
    assert m.waiting == 2
    m.exposition()
    assert m.waiting == 1


def test_queue_times_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "MAX_WAITING", 2)
    m = metrics()
    for n in range(3):
        m.event(JobEvent("accepted", f"{n:032x}", 1, "queued", 0.0), now=float(n))
    assert m.waiting == 2
    m.event(JobEvent("started", f"{0:032x}", 1, "running", 0.0), now=5.0)
    assert value(m, "schedbus_job_wait_seconds_count", priority="1") is None


def test_journal_commits_are_observed() -> None:
    m = metrics()
    m.journal_committed(0.002)
    m.journal_committed(0.2)
    assert value(m, "schedbus_journal_commit_seconds_count") == 2
    assert value(m, "schedbus_journal_commit_seconds_bucket", le="0.0025") == 1


def test_live_figures_are_read_at_each_scrape_and_the_global_registry_is_untouched() -> None:
    figures = LiveFigures({("queued", "sleep"): 3, ("running", "resize"): 1}, 2, 5)
    m = metrics(figures)
    families = {f.name: f for f in text_string_to_metric_families(m.exposition().decode())}
    jobs = {tuple(sorted(s.labels.items())): s.value for s in families["schedbus_jobs"].samples}
    assert jobs == {
        (("state", "queued"), ("task", "sleep")): 3,
        (("state", "running"), ("task", "resize")): 1,
    }
    assert families["schedbus_schedulers"].samples[0].value == 2
    assert families["schedbus_steals"].samples[0].value == 5
    assert REGISTRY.get_sample_value("schedbus_schedulers") is None
    metrics()  # a second bus in the same process registers its own metrics


def test_the_core_tallies_its_jobs_by_state_and_task() -> None:
    core = Dispatcher()
    assert core.tally() == {} and core.steals == 0
    for task in ("sleep", "sleep", "resize"):
        core.submit(JobPayload(task=task, runtime=1.0 if task == "sleep" else None), 0.0, 0.0)
    assert core.tally() == {("queued", "sleep"): 2, ("queued", "resize"): 1}
