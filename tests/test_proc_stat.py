"""What ``/proc`` says of processes (:mod:`scheduler.worker.proc_stat`), read from real
processes: a tree's memory and CPU, and a root that is not there."""

from __future__ import annotations

import os
import subprocess

import pytest

from scheduler.worker import proc_stat


def test_tree_usage_sums_the_tree_and_knows_a_missing_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    me = os.getpid()
    assert proc_stat.memory_of(me) > 0
    assert proc_stat.memory_of(-5) == 0
    child = subprocess.Popen(["sleep", "600"])
    try:
        table = proc_stat.proc_table()
        # Pss moves whenever any process sharing a page starts or ends: the sum is checked
        # against fixed sizes, not against a second reading of the live one.
        sizes = {me: 1000, child.pid: 200}
        monkeypatch.setattr(proc_stat, "memory_of", lambda pid: sizes.get(pid, 1))
        members = [me, *proc_stat.descendants(me, table)]
        assert child.pid in members
        memory, cpu = proc_stat.tree_usage(me, table) or (0, 0.0)
        assert memory == sum(sizes.get(pid, 1) for pid in members)
        assert cpu == pytest.approx(sum(table[pid].cpu_s for pid in members))
        assert cpu >= table[me].cpu_s > 0
        assert proc_stat.tree_usage(-5, table) is None
    finally:
        child.kill()
        child.wait()
