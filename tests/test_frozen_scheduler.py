"""A scheduler frozen (SIGSTOP) past its lease starts none of the stale assignments waiting
in its queue when it resumes: a real bus, a real worker, real job processes that log
every attempt."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import defaultdict
from collections.abc import Collection
from pathlib import Path

from conftest import ROOT, Commands, unit, wait_until

from scheduler.bus.config import BusConfig, bus_rules
from scheduler.bus.server import BusServer
from scheduler.producer.client import ProducerClient
from scheduler.protocol import Assignment, JobEvent, JobPayload, Report
from scheduler.protocol_types import FINAL_EVENTS
from scheduler.tasks import TaskRegistry
from scheduler.worker.executor import Executor

TASKS = str(ROOT / "tests" / "attempt_log_tasks.py")


def attempts(log: Path) -> dict[str, list[tuple[int, float, float | None]]]:
    """Per job, its runs as (attempt, start, end or None), in start order."""
    runs: dict[str, list[tuple[int, float, float | None]]] = defaultdict(list)
    open_runs: dict[str, tuple[str, int, float]] = {}
    for line in log.read_text().splitlines():
        kind, job_id, attempt, stamp, pid = line.split()
        if kind == "start":
            open_runs[pid] = (job_id, int(attempt), float(stamp))
        else:
            _, number, start = open_runs.pop(pid)
            runs[job_id].append((number, start, float(stamp)))
    for job_id, number, start in open_runs.values():
        runs[job_id].append((number, start, None))
    return {job_id: sorted(found, key=lambda run: run[1]) for job_id, found in runs.items()}


async def test_the_executor_gives_back_what_it_may_not_start() -> None:
    reports: list[Report] = []
    allowed = [True]
    executor = Executor(
        1,
        10 * unit(),
        TaskRegistry(),
        lambda report, _: reports.append(report),
        may_start=lambda: allowed[0],
    )
    try:
        executor.submit(Assignment("running", 1, 5, runtime=30 * unit(), task="sleep"))
        executor.submit(Assignment("waiting", 1, 5, runtime=0.1, task="sleep"))
        assert [(r.event, r.id) for r in reports] == [("started", "running")]
        allowed[0] = False  # the lease may have expired
        assert executor.cancel("running", 1)
        await wait_until(lambda: len(reports) == 3, 10 * unit(), "the queue is given back")
        events = [(r.event, r.id) for r in reports]
        assert ("revoked", "waiting") in events and ("started", "waiting") not in events
        assert executor.held() == []
    finally:
        await executor.shutdown()


async def test_a_thawed_scheduler_starts_no_stale_queued_attempt(
    commands: Commands, tmp_path: Path
) -> None:
    log = tmp_path / "attempts.log"
    log.touch()
    os.environ["SCHEDBUS_ATTEMPT_LOG"] = str(log)
    lease = 1.0 * unit()
    config = BusConfig(host="127.0.0.1", port=0, rules=bus_rules(lease=lease, steal="off"))
    async with BusServer(config) as bus:
        worker = await commands.start(
            "scheduler.worker", "--tasks", TASKS, "-s", "1", "-t", "60", "--bus", bus.url
        )
        events: list[JobEvent] = []
        async with ProducerClient(bus.url) as client:

            async def collect() -> None:
                async for event in client.events():
                    events.append(event)

            collecting = asyncio.create_task(collect())
            await wait_until(lambda: bus.scheduler_names() != [], 20 * unit(), "it registers")
            runtimes = [1.5 * lease, 0.1 * unit(), 0.1 * unit()]
            ids = [
                await client.submit(JobPayload(priority=5, runtime=r, task="recorded_sleep"))
                for r in runtimes
            ]

            def seen(kind: str, job_ids: Collection[str]) -> bool:
                return set(job_ids) <= {e.id for e in events if e.event == kind}

            await wait_until(lambda: seen("started", ids[:1]), 20 * unit(), "the first starts")
            await wait_until(lambda: seen("assigned", ids), 20 * unit(), "all are assigned")
            worker.send_signal(signal.SIGSTOP)
            try:
                await wait_until(lambda: seen("requeued", ids), 20 * unit(), "the lease expires")
                await wait_until(
                    lambda: any(
                        line.startswith(f"end {ids[0]} 1") for line in log.read_text().splitlines()
                    ),
                    20 * unit(),
                    "the running job ends meanwhile",
                )
            finally:
                worker.send_signal(signal.SIGCONT)
            await wait_until(
                lambda: {e.id for e in events if e.event in FINAL_EVENTS} == set(ids),
                30 * unit(),
                "every job ends",
            )
            collecting.cancel()
        assert worker.returncode is None
    finals = [e for e in events if e.event in FINAL_EVENTS]
    assert {e.event for e in finals} == {"succeeded"}
    runs = attempts(log)
    for job_id in ids[1:]:
        assert [attempt for attempt, _, _ in runs[job_id]] == [2], runs[job_id]
    for job_id in ids:
        ordered = runs[job_id]
        assert all(end is not None for _, _, end in ordered), ordered
        for before, after in zip(ordered, ordered[1:], strict=False):
            assert before[2] is not None and before[2] <= after[1], ordered
    assert "the lease may have expired" in commands.log_of(worker)
