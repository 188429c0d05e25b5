"""Every job process draws its own random numbers, even from a generator its task module
created before the fork: numpy's global one (``numpy.random.rand()``), which numpy seeds
once at import and never again in a forked child. Real job processes on each path: the
fork server, the scheduler itself, warm slot processes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import random_tasks
from conftest import unit
from test_executor import Reports, job

from scheduler.policy.warm import WarmLimits
from scheduler.tasks import TaskRegistry
from scheduler.worker.executor import Executor
from scheduler.worker.forkserver_launcher import ForkServerLauncher
from scheduler.worker.launch import Launcher, ProcessLauncher
from scheduler.worker.warm import WarmPool

pytestmark = pytest.mark.timeout(60)

REGISTRY = TaskRegistry({"draw": random_tasks.draw})
SLOTS = 3


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture(params=["fork_server", "scheduler", "warm"])
async def executor(request: pytest.FixtureRequest, reports: Reports) -> AsyncIterator[Executor]:
    """Three slots whose jobs are forked by a fork server, by this process (which has
    imported ``numpy.random`` with the task module), or run by warm slot processes
    forked from this process."""
    launcher: Launcher
    if request.param == "fork_server":
        launcher = ForkServerLauncher(REGISTRY)
        await launcher.ready()
    elif request.param == "scheduler":
        launcher = ProcessLauncher()
    else:
        launcher = WarmPool(WarmLimits(100))
    made = Executor(SLOTS, 10 * unit(), REGISTRY, reports, launcher=launcher)
    yield made
    await made.shutdown()


async def test_jobs_started_together_draw_different_numbers_from_numpy_s_global_generator(
    executor: Executor, reports: Reports
) -> None:
    ids = [f"d{n}" for n in range(SLOTS)]
    for job_id in ids:
        # Held long enough that each job has a slot (a warm slot process) of its own.
        executor.submit(job(job_id, task="draw", args=[0.3 * unit()]))
    draws = []
    for job_id in ids:
        result = (await reports.expect("succeeded", job_id)).result
        assert isinstance(result, list) and len(result) == 2, result
        draws.append(result)
    numpy_draws = {numpy_draw for numpy_draw, _ in draws}
    python_draws = {python_draw for _, python_draw in draws}
    assert len(python_draws) == SLOTS, draws  # Python's random reseeds itself in a child
    assert len(numpy_draws) == SLOTS, f"numpy's global generator repeated itself: {draws}"
