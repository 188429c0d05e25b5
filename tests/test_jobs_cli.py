"""``python -m scheduler.jobs`` against a real bus: show, cancel and vacuum."""

from __future__ import annotations

from conftest import Commands, unit

from scheduler.bus.server import BusServer
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobPayload


async def test_show_cancel_and_vacuum_a_queued_job(bus: BusServer, commands: Commands) -> None:
    async with ProducerClient(bus.url) as client:
        job_id = await client.submit(JobPayload(priority=4, runtime=5))
    jobs = ("scheduler.jobs", "--bus", bus.url)
    code, out = await commands.run(*jobs, "show", job_id, timeout=20 * unit())
    assert (code, f"{job_id} queued priority=4") == (0, out.split(" attempt")[0])
    code, out = await commands.run(*jobs, "cancel", job_id, timeout=20 * unit())
    assert code == 0 and out.startswith(f"{job_id} cancelled")
    code, out = await commands.run(*jobs, "cancel", job_id, timeout=20 * unit())
    assert code == 0 and f"{job_id} cancelled" in out
    code, out = await commands.run(*jobs, "vacuum", "--older-than", "0", timeout=20 * unit())
    assert (code, out.strip()) == (0, "deleted 1 final jobs: 1 cancelled")
    code, _ = await commands.run(*jobs, "show", job_id, timeout=20 * unit())
    assert code == 1
