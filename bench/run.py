"""``scripts/bench``: every figure in one run, printed as a table and written as JSON.

Each figure starts its own bus (and scheduler) as separate processes on 127.0.0.1 with
an ephemeral port, so no figure inherits another's state; every process is stopped by
pid when the figure ends, on errors and on Ctrl-C. Ratios are computed within the run
(the machine is shared and noisy: absolute figures drift, ratios much less).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import click
import psutil

from bench import cluster, disk, fanout, fidelity, fleet, heavy, ingest, ours, plot, simulate, store
from bench import profile as pyspy
from bench.failover import failover_times
from bench.peers import harness
from bench.periodic import periodic_lateness
from bench.procs import Proc, Procs, wait_for_log
from bench.stats import (
    Json,
    cautious_ratio,
    check_goals,
    median,
    render_table,
    table_rows,
    warm_vs_fastest_peer,
)
from bench.system import PYTHON, Bus, cpu_seconds, start_bus, start_scheduler, start_worker

FIGURES = (
    "e2e",
    "e2e_warm",
    "latency",
    "eviction",
    "timeout",
    "ingest",
    "memory",
    "fanout",
    "cluster",
    "peers",
    "delayed",
    "periodic",
    "scheduled",
    "fleet",
    "million",
    "ingest10",
    "cluster10",
    "heavy",
    "simulate",
    "store",
    "failover",
    "fidelity",
)
"""Names accepted by ``--only`` (``e2e`` includes the raw fork loop it is compared with,
``e2e_warm`` warm mode against a process per job, ``cluster`` both figures of three
schedulers on one bus; ``fleet``, ``million``, ``ingest10`` and ``cluster10`` say how the
bus's cost grows with schedulers, queued jobs and producers; ``heavy`` runs a numpy job
through ours and the peers; ``simulate`` times the simulator, ``fidelity`` compares its
waits with a live run's; ``store`` compares the journal in PostgreSQL with SQLite;
``failover`` kills the leader of two buses on one PostgreSQL journal, round after round)."""

WARM_JOBS: Final = 10_000
"""``--warm N`` of the e2e_warm figure's scheduler: no slot process is recycled in a round."""

HOW: dict[str, str] = {
    "store_submits_per_s": "As ingest_jobs_per_s (N single pipelined submits, no scheduler), "
    "on a bus journaling in a SQLite file (--db) and on one journaling in PostgreSQL (--store; "
    "a private server the figure starts, fsync on, same machine, TCP on 127.0.0.1); a fresh "
    "bus and database per round, the stores alternating; median of the rounds and "
    "PostgreSQL's over SQLite's.",
    "store_e2e_jobs_per_s": "As e2e_jobs_per_s (N no-op jobs, one `test_scheduler -s 5`) on "
    "each store, alternating, a fresh bus and database per round; median of the rounds, "
    "PostgreSQL's over SQLite's, and the bus's CPU ms per job on each.",
    "failover_s": "Two buses (--store, one journal on a private PostgreSQL server), one "
    "test_scheduler and one producer given both URLs. Each round SIGKILLs the leader, "
    "submits one job at once and times until the producer hears it assigned by the new "
    "leader; the killed bus then comes back as a standby. N rounds: 20 (--quick: 5).",
    "simulated_jobs_per_s": "python -m scheduler.simulate (the real dispatch core and runners "
    "on a virtual clock) in a fresh interpreter: N producer jobs (-g -p 0.01, runtimes 3-15 s) "
    "on 100 simulated schedulers of 5 slots; jobs over the run's wall seconds and over its "
    "CPU seconds (the machine is shared). N: 100,000 (--quick: 10,000).",
    "simulated_million": "python -m scheduler.simulate --count N -g -p 0.02 --sigma 0.01 "
    "--schedulers 100 --json (5 slots each, the fleet about 90% busy, the default costs of a "
    "live job) in a fresh interpreter: its wall and CPU seconds, and the wall seconds scaled "
    "to 1,000,000 jobs; core says whether it ran the compiled core. N: 1,000,000 (--quick: "
    "100,000).",
    "sim_fidelity": "The cluster fleet (a bus --steal urgent, three `test_scheduler -s 2`) "
    "and the cluster figures' seeded runtimes as a stream: N jobs of priority 0, 5 or 8 "
    "(1:2:2) arriving with exponential gaps at 70% of the 6 slots' capacity, submitted one "
    "by one at their times; every event recorded; R rounds, each on a fresh bus and "
    "schedulers. The simulator then replays each round's jobs (at their accepted stamps) on "
    "3 simulated schedulers of 2 slots, with no costs, its default costs, the costs "
    "calibrated from these recordings, and each job drawing its costs from the recorded "
    "samples (5 draws per round: the headline). Waits (accepted, requeued or evicted -> "
    "started, the bus's stamps) per priority, p50/p90: live (mean of the rounds) and "
    "simulated (median of the simulations), their ratio; live_spread = how far apart the "
    "rounds are. N, R: 300, 2 (--quick: 100, 1).",
    "bus_scheduled_jobs": "A bus with a journal file and no scheduler: its RSS with a producer "
    "connected, then with N no-op jobs scheduled an hour ahead (submit_many of delayed jobs), "
    "all accepted; then the bus is stopped (SIGTERM) and started again on the same journal: "
    "the seconds from its start to 'bus listening' (it restores every scheduled job and "
    "sets their timers) and its RSS then. N is the memory figure's job count.",
    "periodic_fire_lateness_ms": "An every=0.5 s schedule of no-op sleep jobs (priority 0) on "
    "an idle bus with one `test_scheduler -s 5`: per firing, the bus's time.time() stamp on "
    "its started event minus its scheduled time (from its job id NAME@<time>); 60 firings "
    "(--quick: 20).",
    "e2e_jobs_per_s": "N no-op jobs (sleep task, runtime 1e-6 s) submitted pipelined by one "
    "ProducerClient (all submits sent before awaiting the replies) to a bus process with one "
    "`test_scheduler -s 5` process (every test_scheduler here runs with --quiet: no log line "
    "per job that starts or succeeds, as the peers run); first submit to last final event "
    "received; median of the rounds.",
    "raw_fork_jobs_per_s": "A fresh interpreter forks one multiprocessing.Process (fork "
    "context) per no-op job, 5 at a time, joining each via its sentinel; median of the rounds, "
    "interleaved with the e2e rounds.",
    "e2e_vs_raw_ratio": "e2e jobs/s over raw fork jobs/s, the lower of two estimates "
    "(e2e_vs_raw_estimates): paired, the median over the rounds of e2e over the raw round run "
    "just before it; best, the best e2e round over the best raw round. Met only when both "
    "say so: a raw round slowed alone once read 0.82x paired where best said 0.65x.",
    "e2e_cpu_ms_per_job": "psutil CPU time (user+system) per job during the e2e rounds: bus, "
    "scheduler process, its job processes (reaped children), and the producer; "
    "raw_fork_cpu_ms_per_job is the same split for the raw loop (getrusage).",
    "e2e_warm_jobs_per_s": "As e2e_jobs_per_s, with the scheduler in warm mode "
    "(`test_scheduler -s 5 --warm 10000`: each slot's process runs job after job); its "
    "rounds alternate with rounds of a second bus and process-per-job scheduler started "
    "alongside (e2e_warm_process_jobs_per_s), median of the rounds.",
    "e2e_warm_cpu_ms_per_job": "As e2e_cpu_ms_per_job for the warm rounds; job_processes "
    "stays 0 (no slot process is reaped), slot_processes is the psutil CPU of the "
    "scheduler's live slot processes over the rounds, per job.",
    "e2e_warm_vs_process_ratio": "e2e_warm_jobs_per_s over the process-per-job round run just "
    "before it, median over the rounds of this run.",
    "peers": "The same N no-op jobs through each peer against a local redis-server "
    "(127.0.0.1, no persistence), workers warmed up first; first enqueue to the last job seen "
    "finished; ours_ratio = our e2e_jobs_per_s / theirs; warm_ratio = our e2e_warm_jobs_per_s / "
    "theirs (when e2e_warm ran).",
    "warm_vs_fastest_peer": "e2e_warm_jobs_per_s over the jobs/s of the fastest peer of the "
    "same run on the same no-op jobs (the issue's warm-mode goal), and that peer's rate.",
    "submit_to_accepted_ms": "One job at a time on an idle scheduler: the producer's "
    "time.time() before sending the submit -> the accepted reply received.",
    "delayed_start_lateness_ms": "One delayed no-op job at a time (run_at = the producer's "
    "time.time() + 50 ms at the submit) on an idle `test_scheduler -s 5`: the bus's time.time() "
    "on the job's started event minus its run_at; after 5 warm-up jobs.",
    "submit_to_start_ms": "One job at a time on an idle scheduler: the producer's time.time() "
    "before sending the submit -> the bus's time.time() stamp on the started event (stamped "
    "when the scheduler's report arrives, sent right after fork() returns); same machine, "
    "same clock.",
    "submit_to_final_ms": "Same jobs: send time -> the producer's time.time() on receiving "
    "the final (succeeded) event.",
    "eviction_ms": "5 slots busy with priority-10 jobs; submit a priority-0 no-op job -> the "
    "bus's stamp on its started event (same clock as the send), repeated once 5 long jobs "
    "run again; the bus's caps on evictions and deliveries per job are lifted.",
    "timeout_overrun_ms": "Jobs sleeping 5 s with a 0.1 s timeout, submitted at once to 5 "
    "slots: the final event's wall_s (process life, fork to reap, measured by the scheduler) "
    "minus the timeout.",
    "timeout_final_after_deadline_ms": "Same jobs: the bus's stamp on the timed_out event "
    "minus (its started stamp + the timeout).",
    "ingest_jobs_per_s": "No scheduler connected: one raw v2 WebSocket producer sends N "
    "pre-encoded job_request frames back to back; first send -> the last accepted reply.",
    "ingest_bulk_jobs_per_s": "As ingest, with submit_many frames of 1000 jobs each.",
    "bus_bytes_per_queued_job": "Bus RSS (psutil) with a producer connected and 0 jobs, then "
    "with N jobs queued (no scheduler) after every submit was accepted: the difference / N.",
    "fanout": "A bus with 20 lightweight v2 schedulers (one process; each answers every "
    "assign with started+succeeded at once, forking nothing): N pipelined no-op jobs, first "
    "submit -> last final event; the bus's psutil CPU per job and share of one core.",
    "cluster_makespan": "A bus process (--steal urgent) and one `test_scheduler -s 2`; the "
    "whole burst (N sleep jobs of seeded uniform runtimes, priority 5, so that none evicts "
    "another) submitted in one submit_many: 2 run there and the rest wait in its local queue; "
    "then two more `test_scheduler -s 2` start and steal. From the bus's log stamp of the last "
    "scheduler's registration to the bus's stamp on the last final event; ideal_s = the work "
    "left at that moment (runtimes minus what already ran) / 6 slots, or the longest job left "
    "if longer; greedy_s = a zero-overhead global FIFO queue from the same state; steals from "
    "the bus's stats.",
    "cluster_eviction_ms": "Three `test_scheduler -s 2` on one bus, all 6 slots busy with "
    "priority-8 jobs; submit a priority-0 no-op job -> the bus's stamp on its started event "
    "(same clock as the send), repeated once it ended and 6 long jobs run again (the evicted "
    "one requeued and restarted, or stolen by the freed slot); the bus's caps on evictions and "
    "deliveries per job are lifted. cluster_eviction says where urgent jobs started and "
    "whether the evicted job was the long job that started last.",
    "fleet_dispatch": "For 1, 10, 100 and 1,000 schedulers: a bus each (--max-connections "
    "raised), all four running at once, each with that many lightweight v2 schedulers of 5 "
    "slots in one process (bench.fanout: each answers every assign with started+succeeded at "
    "once, forking nothing); each bus's idle CPU over 1 s (heartbeats); a warm-up of N/10 "
    "jobs each; then R rounds, each measuring every count in turn: N pipelined no-op jobs from "
    "one producer, first submit -> last final event, the bus's psutil CPU per job (and net of "
    "its idle share). Each point is the median of its rounds; cpu_ratio_largest_vs_1 = the "
    "median over the rounds of the 1,000-scheduler figure over the 1-scheduler one of the same "
    "round. N, R: 10,000, 3 (--quick: 1,000, 1).",
    "queued_jobs": "A bus with a journal and no scheduler: its RSS with a producer connected, "
    "then with N no-op jobs queued (submit_many of 1000, 20 frames in flight), all accepted, "
    "the producer still connected (it watches its jobs); rss_mb_at_1m projects that to "
    "1,000,000 jobs (the measured RSS when N is 1,000,000). Then SIGTERM, and a bus started "
    "on the same journal: seconds from its start to 'bus listening', to a producer "
    "registered, and to its stats reply (queued_after_restart); reload_s_at_1m scales the "
    "last linearly to 1,000,000 jobs.",
    "ingest_many_producers": "No scheduler: 10 raw v2 WebSocket producers at once, each "
    "sending its share of N pre-encoded job_request frames back to back (bulk: 5N jobs in "
    "submit_many frames of 1000); first send -> the last accepted reply of any of them.",
    "cluster10_makespan": "As cluster_makespan, with 10 `test_scheduler -s 2` (20 slots): the "
    "burst submitted while one is connected, then 9 more start and steal.",
    "heavy": "A job that imports numpy (when its worker starts) and computes for ~5 ms "
    "(bench/heavy_work.py): ours = `python -m scheduler.worker --tasks bench.heavy_task -s 5` "
    "plus each variant's options (--ours-variant), N jobs pipelined from one producer after "
    "20 warm-up jobs, first submit -> last final event; the peers run the same function as "
    "in the peers figure; ours_ratio = each variant / each peer.",
    "profile": "py-spy record --nonblocking at 250 Hz attached to the bus and the scheduler "
    "during one extra e2e round; shares of the samples (samples ~ CPU time).",
}


@dataclass(frozen=True)
class Plan:
    """How many jobs each figure uses."""

    quick: bool
    e2e_jobs: int
    rounds: int
    latency_jobs: int
    eviction_reps: int
    timeout_jobs: int
    ingest_jobs: int
    memory_jobs: int
    fanout_jobs: int
    peer_jobs: int
    size: int = 5
    timeout_s: float = 0.1
    fanout_schedulers: int = 20
    cluster_jobs: int = 90
    cluster_runtime_s: tuple[float, float] = (0.4, 1.6)
    cluster_evictions: int = 50
    cluster_schedulers: int = 3
    cluster_size: int = 2
    cluster_seed: int = 9
    periodic_firings: int = 60
    fleet_counts: tuple[int, ...] = (1, 10, 100, 1000)
    fleet_jobs: int = 10_000
    million_jobs: int = 1_000_000
    many_producers: int = 10
    cluster10_schedulers: int = 10
    cluster10_jobs: int = 300
    heavy_jobs: int = 1000
    failovers: int = 20
    fidelity_jobs: int = 300
    fidelity_rounds: int = 2
    sim_million_jobs: int = 1_000_000


FULL = Plan(False, 2000, 3, 500, 50, 50, 20_000, 100_000, 5000, 2000)
QUICK = Plan(
    True,
    500,
    1,
    100,
    20,
    20,
    5000,
    20_000,
    1000,
    0,
    cluster_jobs=60,
    cluster_runtime_s=(0.1, 0.5),
    cluster_evictions=20,
    periodic_firings=20,
    fleet_jobs=1000,
    million_jobs=50_000,
    cluster10_jobs=100,
    heavy_jobs=200,
    failovers=5,
    fidelity_jobs=100,
    fidelity_rounds=1,
    sim_million_jobs=100_000,
)


class Bench:
    """Runs the selected figures into one results dict; a failed figure records its error."""

    def __init__(
        self,
        plan: Plan,
        procs: Procs,
        workdir: Path,
        variants: Sequence[heavy.Variant] = heavy.VARIANTS,
        skip_peers: bool = False,
    ) -> None:
        self.plan = plan
        self.variants = variants
        self.skip_peers = skip_peers
        self.procs = procs
        self.workdir = workdir
        self.results: Json = {}
        self.errors: dict[str, str] = {}

    async def guarded(
        self, name: str, keys: tuple[str, ...], step: Callable[[], Awaitable[None]]
    ) -> None:
        """Run one figure; on failure set its ``keys`` to ``{"error": ...}`` and go on."""
        t0 = time.monotonic()
        click.echo(f"bench: {name} ...", err=True)
        try:
            await step()
        except Exception as exc:  # one figure's failure must not lose the others
            message = f"{type(exc).__name__}: {exc}".strip()
            self.errors[name] = message
            for key in keys:
                self.results.setdefault(key, {"error": message.splitlines()[0][:300]})
            click.echo(f"bench: {name} failed: {message}", err=True)
        click.echo(f"bench: {name} done in {time.monotonic() - t0:.1f} s", err=True)

    @asynccontextmanager
    async def system(
        self,
        name: str,
        scheduler: bool = True,
        bus_options: dict[str, str] | None = None,
        scheduler_options: tuple[str, ...] = (),
    ) -> AsyncIterator[tuple[Bus, Proc | None]]:
        """A fresh bus (and one scheduler of ``plan.size`` slots, started with
        ``scheduler_options``), stopped on exit."""
        work = self.workdir / name
        bus = await start_bus(self.procs, work, f"{name}-bus", bus_options)
        sched: Proc | None = None
        try:
            if scheduler:
                sched = await start_scheduler(
                    self.procs,
                    work,
                    bus.url,
                    name=f"{name}-sched",
                    size=self.plan.size,
                    options=scheduler_options,
                )
            yield bus, sched
        finally:
            if sched is not None:
                self.procs.stop(sched)
            self.procs.stop(bus.proc)

    @asynccontextmanager
    async def cluster_system(
        self, name: str, bus_options: dict[str, str] | None = None
    ) -> AsyncIterator[tuple[Bus, Callable[[str], Awaitable[Proc]]]]:
        """A fresh bus and a function starting one more ``test_scheduler`` of
        ``plan.cluster_size`` slots on it (named, returned once registered); every
        scheduler started and the bus are stopped on exit."""
        work = self.workdir / name
        bus = await start_bus(self.procs, work, f"{name}-bus", bus_options)
        started: list[Proc] = []

        async def add(sched_name: str) -> Proc:
            size = self.plan.cluster_size
            sched = await start_scheduler(self.procs, work, bus.url, name=sched_name, size=size)
            started.append(sched)
            return sched

        try:
            yield bus, add
        finally:
            for sched in reversed(started):
                self.procs.stop(sched)
            self.procs.stop(bus.proc)

    # --- figures ---------------------------------------------------------------------

    async def throughput(self) -> None:
        """Figure 1: e2e rounds interleaved with raw fork rounds."""
        jobs, rounds = self.plan.e2e_jobs, self.plan.rounds
        e2e_runs: list[Json] = []
        raw_runs: list[Json] = []
        async with self.system("e2e") as (bus, sched):
            assert sched is not None
            sched_ps = psutil.Process(sched.pid)
            await ours.e2e_round(bus.url, min(100, jobs), bus.ps, sched_ps, 60)  # warm-up
            for _ in range(rounds):
                raw_runs.append(await raw_fork(jobs, self.plan.size))
                timeout = 60 + jobs / 20
                e2e_runs.append(await ours.e2e_round(bus.url, jobs, bus.ps, sched_ps, timeout))
        e2e = median([r["jobs_per_s"] for r in e2e_runs])
        raw = median([r["jobs_per_s"] for r in raw_runs])
        against = cautious_ratio(
            [r["jobs_per_s"] for r in e2e_runs], [r["jobs_per_s"] for r in raw_runs]
        )
        cpu_keys = e2e_runs[0]["cpu_ms_per_job"].keys()
        self.results.update(
            {
                "e2e_jobs_per_s": round(e2e, 1),
                "raw_fork_jobs_per_s": round(raw, 1),
                "e2e_vs_raw_ratio": against["ratio"],
                "e2e_vs_raw_estimates": {"paired": against["paired"], "best": against["best"]},
                "e2e_cpu_ms_per_job": {
                    k: _mean(r["cpu_ms_per_job"][k] for r in e2e_runs) for k in cpu_keys
                },
                "raw_fork_cpu_ms_per_job": {
                    "parent": _mean(r["parent_cpu_ms_per_job"] for r in raw_runs),
                    "children": _mean(r["child_cpu_ms_per_job"] for r in raw_runs),
                },
                "rss_mb": {
                    "scheduler": e2e_runs[-1]["scheduler_rss_mb"],
                    "raw_fork_parent": raw_runs[-1]["parent_rss_mb"],
                },
                "e2e_rounds": [
                    {"e2e": e["jobs_per_s"], "raw_fork": r["jobs_per_s"], "outcomes": e["outcomes"]}
                    for e, r in zip(e2e_runs, raw_runs, strict=True)
                ],
                "e2e_jobs": jobs,
            }
        )

    async def throughput_warm(self) -> None:
        """Warm mode against a process per job: e2e rounds on two systems, alternating."""
        jobs, rounds = self.plan.e2e_jobs, self.plan.rounds
        warm_runs: list[Json] = []
        process_runs: list[Json] = []
        async with (
            self.system("warm", scheduler_options=("--warm", str(WARM_JOBS))) as (warm, w),
            self.system("process") as (process, p),
        ):
            assert w is not None and p is not None
            warm_ps, process_ps = psutil.Process(w.pid), psutil.Process(p.pid)
            await ours.e2e_round(warm.url, min(100, jobs), warm.ps, warm_ps, 60)  # warm-up
            await ours.e2e_round(process.url, min(100, jobs), process.ps, process_ps, 60)
            timeout = 60 + jobs / 20
            slot_cpu_s = 0.0
            for _ in range(rounds):
                process_runs.append(
                    await ours.e2e_round(process.url, jobs, process.ps, process_ps, timeout)
                )
                before = _children_cpu_s(warm_ps)
                warm_runs.append(await ours.e2e_round(warm.url, jobs, warm.ps, warm_ps, timeout))
                slot_cpu_s += _children_cpu_s(warm_ps) - before
        pairs = zip(warm_runs, process_runs, strict=True)
        cpu_keys = warm_runs[0]["cpu_ms_per_job"].keys()
        self.results.update(
            {
                "e2e_warm_jobs_per_s": round(median([r["jobs_per_s"] for r in warm_runs]), 1),
                "e2e_warm_process_jobs_per_s": round(
                    median([r["jobs_per_s"] for r in process_runs]), 1
                ),
                "e2e_warm_vs_process_ratio": round(
                    median([w["jobs_per_s"] / p["jobs_per_s"] for w, p in pairs]), 2
                ),
                "e2e_warm_cpu_ms_per_job": {
                    k: _mean(r["cpu_ms_per_job"][k] for r in warm_runs) for k in cpu_keys
                }
                | {"slot_processes": round(slot_cpu_s * 1000 / (jobs * rounds), 3)},
            }
        )

    async def latency(self) -> None:
        """Figure 3: one job at a time on an idle scheduler."""
        async with self.system("latency") as (bus, _):
            self.results.update(await ours.latency(bus.url, self.plan.latency_jobs))

    async def delayed(self) -> None:
        """Delayed jobs: how late an idle system starts a job after its ``run_at``."""
        async with self.system("delayed") as (bus, _):
            self.results.update(await ours.delayed_lateness(bus.url, self.plan.latency_jobs))

    async def periodic(self) -> None:
        """Figure: how late an every=0.5 schedule's firings start."""
        async with self.system("periodic") as (bus, _):
            self.results.update(await periodic_lateness(bus.url, self.plan.periodic_firings))

    async def eviction(self) -> None:
        """Figure 4: urgent arrivals on a full scheduler."""
        # Eviction latency, not the caps on evictions and deliveries per job: lift them
        # where the bus has them (each eviction is a delivery too).
        lifted = {"--max-evictions": "100000", "--max-deliveries": "100000"}
        async with self.system("eviction", bus_options=lifted) as (bus, _):
            self.results.update(
                await ours.eviction(bus.url, self.plan.size, self.plan.eviction_reps)
            )

    async def timeout(self) -> None:
        """Figure 5: how far past the deadline overrunning jobs are reaped."""
        async with self.system("timeout") as (bus, _):
            found = await ours.timeouts(bus.url, self.plan.timeout_jobs, self.plan.timeout_s)
        self.results["timeout_overrun_ms"] = found["timeout_overrun_ms"]
        self.results["timeout_final_after_deadline_ms"] = found["timeout_final_after_deadline_ms"]

    async def ingest(self) -> None:
        """Figure 6: accepted submits/s with no scheduler, single and bulk."""
        jobs = self.plan.ingest_jobs
        async with self.system("ingest", scheduler=False) as (bus, _):
            single = await ingest.ingest(bus.url, jobs, bulk=False)
        self.results["ingest_jobs_per_s"] = single["jobs_per_s"]
        async with self.system("ingest-bulk", scheduler=False) as (bus, _):
            why_not = await ingest.bulk_support(bus.url)
            if why_not is not None:
                self.results["ingest_bulk_jobs_per_s"] = {"skipped": why_not}
                return
            bulk = await ingest.ingest(bus.url, jobs, bulk=True)
        self.results["ingest_bulk_jobs_per_s"] = bulk["jobs_per_s"]

    async def store(self) -> None:
        """The journal in PostgreSQL against SQLite: submits/s and e2e jobs/s, one run."""
        plan = self.plan
        self.results.update(
            await store.store_figures(
                self.procs,
                self.workdir / "store",
                plan.ingest_jobs,
                plan.e2e_jobs,
                plan.rounds,
                plan.size,
            )
        )

    async def memory(self) -> None:
        """Figure 7: bus RSS per queued job."""
        async with self.system("memory", scheduler=False) as (bus, _):
            bulk = await ingest.bulk_support(bus.url) is None
        async with self.system("memory", scheduler=False) as (bus, _):
            found = await ingest.memory(bus.url, bus.ps, self.plan.memory_jobs, bulk)
        self.results["bus_bytes_per_queued_job"] = found.pop("bytes_per_job")
        self.results["bus_memory"] = found

    async def scheduled(self) -> None:
        """Bus RSS with many jobs scheduled ahead, and how long a restart with them takes."""
        async with self.system("scheduled", scheduler=False) as (bus, _):
            found = await ingest.scheduled_memory(bus.url, bus.ps, self.plan.memory_jobs)
        started = time.perf_counter()
        work = self.workdir / "scheduled"
        again = await start_bus(self.procs, work, "scheduled-bus")
        try:
            found["restart_s"] = round(time.perf_counter() - started, 2)
            found["rss_after_restart_mb"] = round(again.ps.memory_info().rss / 2**20, 1)
        finally:
            self.procs.stop(again.proc)
        self.results["bus_scheduled_jobs"] = found

    async def fanout(self) -> None:
        """Figure 8: one bus, many instant schedulers."""
        count = self.plan.fanout_schedulers
        async with self.system("fanout", scheduler=False) as (bus, _):
            argv = [PYTHON, "-m", "bench.fanout", "--url", bus.url, "--count", str(count)]
            fakes = self.procs.start("fanout-schedulers", argv, cwd=Path.cwd())
            try:
                await wait_for_log(fakes, r"ready \d+")
                jobs = self.plan.fanout_jobs
                found = await fanout.measure(bus.url, bus.ps, jobs, 60 + jobs / 50)
            finally:
                self.procs.stop(fakes)
        found["schedulers"] = count
        found["jobs_per_scheduler"] = fanout.assigned_spread(fakes.log_text())
        self.results["fanout"] = found

    async def cluster(self) -> None:
        """Figures 9 and 10: three schedulers of ``plan.cluster_size`` slots on one bus."""
        plan = self.plan
        slots = plan.cluster_schedulers * plan.cluster_size
        names = [f"cluster-s{i + 1}" for i in range(plan.cluster_schedulers)]
        low, high = plan.cluster_runtime_s
        runtimes = cluster.burst_runtimes(plan.cluster_jobs, low, high, plan.cluster_seed)
        async with self.cluster_system("cluster", {"--steal": "urgent"}) as (bus, add):
            await add(names[0])

            async def start_others() -> list[str]:
                await asyncio.gather(*(add(name) for name in names[1:]))
                return names[1:]

            self.results["cluster_makespan"] = await cluster.makespan(
                bus.url, runtimes, slots, names[0], start_others, bus.proc.log_text
            )
        # As for eviction_ms: the latency, not the caps on evictions and deliveries per job.
        lifted = {"--max-evictions": "100000", "--max-deliveries": "100000"}
        async with self.cluster_system("cluster-evict", lifted) as (bus, add):
            await asyncio.gather(*(add(f"evict-s{i + 1}") for i in range(len(names))))
            self.results.update(await cluster.eviction(bus.url, slots, plan.cluster_evictions))

    async def fleet(self) -> None:
        """Dispatch CPU per job with 1, 10, 100 and 1,000 instant schedulers, each count
        on its own bus, all running at once: a warm-up, then ``plan.rounds`` rounds that
        each measure every count in turn."""
        counts, jobs = self.plan.fleet_counts, self.plan.fleet_jobs
        async with AsyncExitStack() as stack:
            buses: dict[int, Bus] = {}
            for count in counts:
                room = {"--max-connections": str(count + 100)}
                bus, _ = await stack.enter_async_context(self.system(f"fleet-{count}", False, room))
                argv = [PYTHON, "-m", "bench.fanout", "--url", bus.url, "--count", str(count)]
                fakes = self.procs.start(f"fleet-{count}-schedulers", argv, cwd=Path.cwd())
                stack.callback(self.procs.stop, fakes)
                await wait_for_log(fakes, r"ready \d+", timeout=30 + count / 10)
                buses[count] = bus
            idle = {count: await fleet.idle_share(bus.ps) for count, bus in buses.items()}
            timeout = 60 + jobs / 50
            for bus in buses.values():
                await fanout.measure(bus.url, bus.ps, max(1, jobs // 10), timeout)
            rounds: dict[int, list[Json]] = {count: [] for count in counts}
            for _ in range(self.plan.rounds):
                for count, bus in buses.items():
                    rounds[count].append(await fanout.measure(bus.url, bus.ps, jobs, timeout))
        rows = [fleet.dispatch_row(count, rounds[count], idle[count]) for count in counts]
        self.results["fleet_dispatch"] = fleet.dispatch_summary(rows)

    async def million(self) -> None:
        """Many queued jobs: the bus's RSS, bytes per job, and its reload after a restart."""
        jobs = self.plan.million_jobs
        work = self.workdir / "million"
        bus = await start_bus(self.procs, work, "million-bus")
        try:
            found = await fleet.fill(bus.url, bus.ps, jobs)
        finally:
            stopping = time.perf_counter()
            self.procs.stop(bus.proc, grace=60.0)
        found["stop_s"] = round(time.perf_counter() - stopping, 2)
        started = time.perf_counter()
        again = await start_bus(self.procs, work, "million-bus", ready_timeout=120.0)
        try:
            found["restart_to_listening_s"] = round(time.perf_counter() - started, 2)
            found.update(await fleet.ready_after_restart(again.url, started, 120.0))
            found["rss_after_restart_mb"] = round(again.ps.memory_info().rss / 2**20, 1)
        finally:
            self.procs.stop(again.proc, grace=60.0)
        found["reload_s_at_1m"] = round(found["restart_to_stats_s"] * 1_000_000 / jobs, 2)
        self.results["queued_jobs"] = found

    async def ingest10(self) -> None:
        """Accepted jobs/s with ``plan.many_producers`` producers sending at once."""
        jobs, producers = self.plan.ingest_jobs, self.plan.many_producers
        async with self.system("ingest10", scheduler=False) as (bus, _):
            single = await fleet.ingest_many(bus.url, jobs, producers, bulk=False)
        async with self.system("ingest10-bulk", scheduler=False) as (bus, _):
            bulk = await fleet.ingest_many(bus.url, jobs * 5, producers, bulk=True)
        self.results["ingest_many_producers"] = {
            "jobs_per_s": single["jobs_per_s"],
            "bulk_jobs_per_s": bulk["jobs_per_s"],
            "producers": producers,
            "jobs": jobs,
            "bulk_jobs": jobs * 5,
        }

    async def cluster10(self) -> None:
        """The cluster makespan figure with ``plan.cluster10_schedulers`` schedulers."""
        plan = self.plan
        count = plan.cluster10_schedulers
        names = [f"c10-s{i + 1}" for i in range(count)]
        low, high = plan.cluster_runtime_s
        runtimes = cluster.burst_runtimes(plan.cluster10_jobs, low, high, plan.cluster_seed)
        async with self.cluster_system("cluster10", {"--steal": "urgent"}) as (bus, add):
            await add(names[0])

            async def start_others() -> list[str]:
                await asyncio.gather(*(add(name) for name in names[1:]))
                return names[1:]

            self.results["cluster10_makespan"] = await cluster.makespan(
                bus.url, runtimes, count * plan.cluster_size, names[0], start_others,
                bus.proc.log_text,
            )  # fmt: skip

    async def heavy(self) -> None:
        """A task importing numpy and computing ~5 ms: ours (each variant) and the peers'."""
        mine: Json = {}
        problem = harness.import_problem(Path(PYTHON), "numpy")
        for name, extra in self.variants:
            if problem is not None:
                mine[name] = {"skipped": f"cannot import numpy: {problem}"}
                continue
            async with self.heavy_system(name, extra) as (bus, sched):
                mine[name] = await heavy.e2e(bus.url, self.plan.heavy_jobs, bus.ps, sched)
                mine[name]["options"] = " ".join(extra)
        found: Json = {"task": heavy.DESCRIPTION, "ours": mine}
        if self.plan.peer_jobs and not self.skip_peers:
            peers = await harness.run_peers(
                self.procs, self.workdir, self.plan.heavy_jobs, heavy.best_rate(mine), "heavy"
            )
            found["peers"] = peers
            found["ours_ratio"] = heavy.ratios(mine, peers)
        else:
            found["peers"] = {"skipped": "the peers run only in the full run without --skip-peers"}
        self.results["heavy"] = found

    @asynccontextmanager
    async def heavy_system(
        self, name: str, extra: Sequence[str]
    ) -> AsyncIterator[tuple[Bus, psutil.Process]]:
        """A fresh bus and one ``scheduler.worker --tasks bench.heavy_tasks`` with ``extra``
        options, stopped on exit."""
        work = self.workdir / f"heavy-{name}"
        bus = await start_bus(self.procs, work, f"heavy-{name}-bus")
        sched: Proc | None = None
        try:
            sched = await start_worker(
                self.procs, work, bus.url, f"heavy-{name}-sched", self.plan.size,
                heavy.TASK_MODULE, extra,
            )  # fmt: skip
            yield bus, psutil.Process(sched.pid)
        finally:
            if sched is not None:
                self.procs.stop(sched)
            self.procs.stop(bus.proc)

    async def failover(self) -> None:
        """Failover time: leader SIGKILL to the first assignment by the next leader."""
        work = self.workdir / "failover"
        work.mkdir(parents=True, exist_ok=True)
        self.results.update(await failover_times(self.procs, work, self.plan.failovers))

    async def simulate(self) -> None:
        """The simulator's speed (no bus: it runs the core on a virtual clock)."""
        jobs = 10_000 if self.plan.quick else 100_000
        self.results.update(await simulate.simulated_jobs_per_s(jobs))
        self.results.update(await simulate.simulated_million(self.plan.sim_million_jobs))

    async def fidelity(self) -> None:
        """Simulated against live waits on the cluster fleet and runtimes, one run each."""
        plan = self.plan
        count, size = plan.cluster_schedulers, plan.cluster_size
        low, high = plan.cluster_runtime_s
        jobs = fidelity.stream(plan.fidelity_jobs, low, high, plan.cluster_seed, count * size)
        rounds = []
        for index in range(plan.fidelity_rounds):
            name = f"fidelity{index + 1}"
            async with self.cluster_system(name, {"--steal": "urgent"}) as (bus, add):
                await asyncio.gather(*(add(f"{name}-s{i + 1}") for i in range(count)))
                rounds.append(await fidelity.record(bus.url, jobs, 60 + 2 * jobs[-1][0]))
        figure = fidelity.figure(rounds, count, size, self.workdir)
        click.echo(
            "\n".join(f"bench: fidelity: {line}" for line in fidelity.lines(figure)), err=True
        )
        self.results["sim_fidelity"] = figure

    async def peers(self) -> None:
        """Figure 2: the same workload through RQ, arq, Celery and Dramatiq."""
        ours_rate = self.results.get("e2e_jobs_per_s")
        ours_value = ours_rate if isinstance(ours_rate, int | float) else None
        warm_rate = self.results.get("e2e_warm_jobs_per_s")
        warm_value = warm_rate if isinstance(warm_rate, int | float) else None
        self.results["peers"] = await harness.run_peers(
            self.procs, self.workdir, self.plan.peer_jobs, ours_value, warm=warm_value
        )

    async def profile(self) -> None:
        """py-spy on the bus and the scheduler during one extra e2e round."""
        if not pyspy.PY_SPY.exists():
            self.results["profile"] = {"skipped": f"{pyspy.PY_SPY} is not installed"}
            return
        jobs = self.plan.e2e_jobs
        async with self.system("profile") as (bus, sched):
            assert sched is not None
            sched_ps = psutil.Process(sched.pid)
            await ours.e2e_round(bus.url, 100, bus.ps, sched_ps, 60)
            outs = {"bus": self.workdir / "bus.spy", "scheduler": self.workdir / "sched.spy"}
            spies = [
                pyspy.start(self.procs, bus.proc.pid, outs["bus"]),
                pyspy.start(self.procs, sched.pid, outs["scheduler"]),
            ]
            await asyncio.sleep(1.0)  # py-spy attaches
            try:
                found = await ours.e2e_round(bus.url, jobs, bus.ps, sched_ps, 60 + jobs / 20)
            finally:
                for spy in spies:
                    pyspy.stop(self.procs, spy)
        summary: Json = {"e2e_jobs_per_s_while_profiled": found["jobs_per_s"]}
        for name, path in outs.items():
            text = path.read_text() if path.exists() else ""
            summary[name] = pyspy.summarize(text)
        self.results["profile"] = summary


def _children_cpu_s(ps: psutil.Process) -> float:
    """User + system CPU seconds of the live children of ``ps``: its warm slot processes
    (none is recycled during the figure, so none takes its CPU away with it)."""
    total = 0.0
    for child in ps.children():
        try:
            total += cpu_seconds(child)
        except psutil.NoSuchProcess:
            pass
    return total


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return round(sum(items) / len(items), 3)


async def raw_fork(jobs: int, concurrency: int) -> Json:
    """One round of :mod:`bench.raw_fork` in a fresh interpreter."""
    argv = [PYTHON, "-m", "bench.raw_fork", "--jobs", str(jobs), "--concurrency", str(concurrency)]
    child = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE)
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"bench.raw_fork exited with {child.returncode}")
    result: Json = json.loads(out.decode().strip().splitlines()[-1])
    return result


def machine() -> Json:
    """The machine the figures were measured on."""
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def code_facts() -> Json:
    """Which scheduler code was measured: its path, the commit, uncommitted changes."""
    import scheduler

    package = Path(scheduler.__file__).resolve().parent

    def git(*args: str) -> str | None:
        done = subprocess.run(
            ["git", *args], cwd=package, capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--", ".")
    return {
        "scheduler_package": str(package),
        "commit": git("rev-parse", "--short", "HEAD"),
        "scheduler_uncommitted_changes": None if status is None else bool(status),
    }


def selected(only: str | None, skip_peers: bool) -> list[str]:
    """The figures to run, in :data:`FIGURES` order; raises UsageError for unknown names."""
    names = FIGURES if only is None else tuple(n.strip() for n in only.split(",") if n.strip())
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise click.UsageError(f"unknown figure(s) {unknown}; choose from {', '.join(FIGURES)}")
    return [n for n in FIGURES if n in names and not (skip_peers and n == "peers")]


@dataclass(frozen=True)
class RunOptions:
    """How the run goes besides its plan: the profile, why the peers are skipped (None:
    they run), our variants in the heavy figure, and whether the peers are skipped."""

    profile: bool = False
    skip_reason: str | None = None
    variants: tuple[heavy.Variant, ...] = heavy.VARIANTS
    skip_peers: bool = False


async def run(
    plan: Plan, figures: list[str], options: RunOptions, workdir: Path
) -> tuple[Json, bool]:
    """Run ``figures`` (and the profile) with logs in ``workdir``; return results, success.

    SIGTERM cancels the run like Ctrl-C does; either way every child is stopped first.
    """
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with Procs(workdir) as procs:
        bench = Bench(plan, procs, workdir, options.variants, options.skip_peers)
        steps: dict[str, tuple[tuple[str, ...], Callable[[], Awaitable[None]]]] = {
            "e2e": (
                ("e2e_jobs_per_s", "raw_fork_jobs_per_s", "e2e_vs_raw_ratio"),
                bench.throughput,
            ),
            "e2e_warm": (
                ("e2e_warm_jobs_per_s", "e2e_warm_vs_process_ratio"),
                bench.throughput_warm,
            ),
            "latency": (("submit_to_start_ms", "submit_to_final_ms"), bench.latency),
            "eviction": (("eviction_ms",), bench.eviction),
            "timeout": (("timeout_overrun_ms",), bench.timeout),
            "ingest": (("ingest_jobs_per_s",), bench.ingest),
            "memory": (("bus_bytes_per_queued_job",), bench.memory),
            "fanout": (("fanout",), bench.fanout),
            "cluster": (("cluster_makespan", "cluster_eviction_ms"), bench.cluster),
            "peers": (("peers",), bench.peers),
            "delayed": (("delayed_start_lateness_ms",), bench.delayed),
            "periodic": (("periodic_fire_lateness_ms",), bench.periodic),
            "scheduled": (("bus_scheduled_jobs",), bench.scheduled),
            "fleet": (("fleet_dispatch",), bench.fleet),
            "million": (("queued_jobs",), bench.million),
            "ingest10": (("ingest_many_producers",), bench.ingest10),
            "cluster10": (("cluster10_makespan",), bench.cluster10),
            "heavy": (("heavy",), bench.heavy),
            "simulate": (("simulated_jobs_per_s", "simulated_million"), bench.simulate),
            "store": (("store_submits_per_s", "store_e2e_jobs_per_s"), bench.store),
            "failover": (("failover_s",), bench.failover),
            "fidelity": (("sim_fidelity",), bench.fidelity),
        }
        for name in figures:
            keys, step = steps[name]
            await bench.guarded(name, keys, step)
        if options.skip_reason is not None:
            skipped = {"skipped": options.skip_reason}
            bench.results["peers"] = {name: skipped for name in harness.PEERS}
        if options.profile:
            await bench.guarded("profile", ("profile",), bench.profile)
    return bench.results | {"errors": bench.errors}, not bench.errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="Fewer jobs, one round, no peers: under a minute.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bench-results.json"),
    show_default=True,
    help="Where to write the figures as JSON.",
)
@click.option("--only", metavar="NAME,...", help=f"Run only these figures: {', '.join(FIGURES)}.")
@click.option("--skip-peers", is_flag=True, help="Do not run RQ, arq, Celery and Dramatiq.")
@click.option("--profile", is_flag=True, help="Also profile the bus and scheduler with py-spy.")
@click.option("--keep-logs", is_flag=True, help="Keep every process's log (kept anyway on errors).")
@click.option(
    "--ours-variant",
    "variants",
    multiple=True,
    metavar="NAME=OPTIONS",
    help="A way to run our worker in the heavy figure: a name and scheduler.worker options "
    "('warm=--warm 100'); repeat for several. Default: "
    + ", ".join(f"{n}={' '.join(o)}" for n, o in heavy.VARIANTS),
)
def cli(
    quick: bool,
    out: Path,
    only: str | None,
    skip_peers: bool,
    profile: bool,
    keep_logs: bool,
    variants: tuple[str, ...],
) -> None:
    """Measure schedbus against the raw fork loop and other job queues, in one run.

    Prints a table and writes the same figures, each with how it was measured, to OUT.
    """
    plan = QUICK if quick else FULL
    figures = selected(only, skip_peers or quick)
    try:
        chosen = tuple(heavy.parse_variant(v) for v in variants) or heavy.VARIANTS
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ours-variant") from None
    skip_reason: str | None = None
    if "peers" in selected(only, False):
        if quick:
            skip_reason = "--quick: the peers run only in the full run"
        elif skip_peers:
            skip_reason = "--skip-peers"
    facts = machine() | {"code": code_facts()}
    started = time.time()
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="schedbus-bench-"))
    # Every bus the bench starts writes its token file there, and every client it starts
    # (in this process or another) reads it there: never the user's own state directory.
    os.environ["XDG_STATE_HOME"] = str(workdir / "state")
    facts["workdir"] = {"path": str(workdir), "file_create_us": disk.file_create_us(workdir)}
    try:
        options = RunOptions(profile, skip_reason, chosen, skip_peers or quick)
        results, ok = asyncio.run(run(plan, figures, options, workdir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        shutil.rmtree(workdir, ignore_errors=True)
        click.echo("bench: interrupted; every process it started is stopped", err=True)
        sys.exit(130)
    wall = round(time.monotonic() - t0, 1)
    facts["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    facts["workdir"]["file_create_us_at_end"] = disk.file_create_us(workdir)
    report = build_report(plan, figures, results, facts, (started, wall))
    out.write_text(json.dumps(report, indent=2) + "\n")
    click.echo(render_table(table_rows(report)))
    created = facts["workdir"]
    click.echo(
        f"\nwall time {wall} s; figures written to {out}; a job's log file cost "
        f"{created['file_create_us']} us of CPU to create at the start, "
        f"{created['file_create_us_at_end']} us at the end, under {workdir} (TMPDIR)"
    )
    click.echo(plot_note(out), err=True)
    if ok and not keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    elif ok:
        click.echo(f"logs kept in {workdir}", err=True)
    else:
        click.echo(f"some figures failed: see {out} ('errors') and the logs in {workdir}", err=True)
        sys.exit(1)


def plot_note(results: Path) -> str:
    """Draw the PNG beside ``results``; say where, or why not (the figures stand anyway)."""
    try:
        return f"plot written to {plot.write_png(results)}"
    except ImportError as exc:
        return f"no plot: {exc} (pip install -r bench/requirements.txt)"


def build_report(
    plan: Plan, figures: list[str], results: Json, facts: Json, when: tuple[float, float]
) -> Json:
    """The JSON written to ``--out``: run facts, machine, figures, goals and how.

    ``when`` is (epoch start time, wall seconds) of the run.
    """
    started, wall = when
    report: Json = {
        "command": "scripts/bench " + " ".join(sys.argv[1:]),
        "quick": plan.quick,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": wall,
        "figures_run": figures,
        "plan": {k: v for k, v in vars(plan).items() if k != "quick"},
        "machine": facts,
    }
    report.update(results)
    warm_ratio = warm_vs_fastest_peer(report)
    if warm_ratio is not None:
        report["warm_vs_fastest_peer"] = warm_ratio
    report["goals"] = check_goals(report)
    report["how"] = {key: text for key, text in HOW.items() if key in report}
    if plan.quick:
        report["notes"] = [
            f"--quick: {plan.e2e_jobs} e2e jobs in 1 round, {plan.latency_jobs} latency jobs, "
            f"{plan.memory_jobs} queued jobs for memory, {plan.million_jobs} for queued_jobs, "
            f"no peers; the full run uses {FULL.e2e_jobs} in {FULL.rounds} rounds, "
            f"{FULL.latency_jobs}, {FULL.memory_jobs} and {FULL.million_jobs}."
        ]
    return report


if __name__ == "__main__":
    cli()
