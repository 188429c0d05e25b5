"""bench.hops: the hop logs of several processes merged, cut per job and timed."""

from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner
from conftest import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.hops import cli, read_hops, segments


def _logs(tmp_path: Path) -> Path:
    ms = 1_000_000
    t0 = 1_800_000_000_000 * ms  # a whole second: a multiple of 0.5 s
    (tmp_path / "hops-1.log").write_text(
        "".join(
            f"{t0 + k * 500 * ms + 1 * ms} b.schedtimer \n"
            f"{t0 + k * 500 * ms + 4 * ms} b.frame "
            '{"cmd":"report","id":"x","event":"started"}\n'
            for k in range(3)
        )
    )
    (tmp_path / "hops-2.log").write_text(
        "".join(f"{t0 + k * 500 * ms + 2 * ms} s.handle Assign\n" for k in range(3))
    )
    return tmp_path


def test_hops_are_merged_cut_at_the_anchor_and_timed_from_the_due_time(tmp_path: Path) -> None:
    cut = segments(read_hops(_logs(tmp_path)), "b.schedtimer", "0.5")
    assert len(cut) == 3
    assert [name for _, name in cut[0]] == [
        "b.schedtimer#1",
        "s.handle:Assign#1",
        "b.frame:report/started#1",
    ]
    assert [round(ms, 3) for ms, _ in cut[1]] == [1.0, 2.0, 4.0]


def test_the_command_prints_the_median_of_each_hop(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, [str(_logs(tmp_path)), "--anchor", "b.schedtimer", "--skip", "0"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "2 segments from b.schedtimer"
    assert lines[-1].split()[:3] == ["3.000", "ms", "b.frame:report/started#1"]
