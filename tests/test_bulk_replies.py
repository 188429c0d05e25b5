"""Audit 2: README, "Bulk submit": "one ``submit_many`` message carries thousands of jobs,
journaled in one transaction; the reply lists ids in order"; and "Frames over 1 MiB close
that one connection (code 1009)".

The bus's ``submitted_many`` reply can pass 1 MiB although the request did not (each result
repeats the id and, with no scheduler for the task, a 90-byte ``warning``): the client's
WebSocket layer closes with 1009, reconnects, re-sends the request (idempotent, every job
``existing``), gets the same oversized reply, and so on for ever. By hand,
``producer --bulk --count 9000 --id-prefix <40 chars>`` never ended (34 reconnects in 60 s),
and ``--count 20000`` loops the same way on its own 2 MB request. This fails until a bulk
submit that the protocol accepts (``MAX_BULK`` jobs) gets its answer.

The same holds for ``watch``, which is how a producer catches up after a reconnect: by hand,
``producer --count 8000 --wait --id-prefix <40 chars>`` with the bus SIGKILLed and restarted
never ended (its re-``watch`` reply is over 1 MiB; 18 closes with 1009 in 6 s), not even
once a scheduler had run its jobs: README's "``producer --wait`` sees every job to its end
through a bus restart" fails for a few thousand jobs.
"""

from __future__ import annotations

import asyncio

from conftest import unit

from scheduler.bus.server import BusServer
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobPayload


async def test_a_bulk_submit_of_nine_thousand_jobs_gets_its_answer(bus: BusServer) -> None:
    prefix = "a-rather-long-client-prefix-for-bulk-jobs"
    payloads = [JobPayload(runtime=1.0, job_id=f"{prefix}-{n}") for n in range(9000)]
    async with ProducerClient(bus.url) as producer:
        results = await asyncio.wait_for(producer.submit_many(payloads), 10 * unit())
    assert [r.id for r in results] == [p.job_id for p in payloads]


async def test_watching_eight_thousand_jobs_gets_its_answer(bus: BusServer) -> None:
    prefix = "a-rather-long-client-prefix-for-bulk-jobs"
    ids = [f"{prefix}-{n}" for n in range(8000)]
    async with ProducerClient(bus.url) as producer:
        for start in range(0, len(ids), 1000):
            chunk = [JobPayload(runtime=1.0, job_id=i) for i in ids[start : start + 1000]]
            await producer.submit_many(chunk)
        watching = await asyncio.wait_for(producer.watch(ids), 10 * unit())
    assert [event.id for event in watching.jobs] == ids
