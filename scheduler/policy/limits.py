"""Memory and CPU limits of a job's whole process tree: which running jobs are over. Pure.

A limit comes from the task (``@task(memory="512M", cpu=30)``) or else from the scheduler
(``--memory-limit``, ``--cpu-limit``), each field on its own. The I/O layer samples the
resident memory and CPU time of each limited job's tree (the job process and every
descendant, plus the CPU time of descendants already reaped) and asks :func:`over_limits`
which jobs to stop; each is then stopped and reported ``failed`` with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

MB: Final = 1024 * 1024
"""The unit memory limits are shown in (``512 MB`` is 512 MiB)."""

_UNITS: Final = {"": 1, "K": 1024, "M": MB, "G": 1024 * MB, "T": 1024 * 1024 * MB}
_SIZE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes in a size such as ``512M``, ``2G``, ``1.5G``, ``4096`` or ``64MiB`` (K, M, G,
    T are powers of 1024); an int is taken as bytes. Raises ``ValueError`` naming the rule
    for anything else, or for a size under one byte."""
    if isinstance(text, int):
        size = text
    else:
        match = _SIZE.fullmatch(text.strip())
        if match is None:
            raise ValueError(
                f"{text!r} is not a size: a number of bytes with an optional K, M, G or T "
                "suffix, such as 512M or 2G"
            )
        number, unit = match.groups()
        size = int(float(number) * _UNITS[unit.upper()])
    if size < 1:
        raise ValueError(f"a memory limit must be at least 1 byte, not {text!r}")
    return size


@dataclass(frozen=True, slots=True)
class Limits:
    """A job tree's resident memory in bytes and CPU time in seconds; None: no limit.

    Raises ``ValueError`` for a limit that is not positive.
    """

    memory: int | None = None
    cpu: float | None = None

    def __post_init__(self) -> None:
        if self.memory is not None and self.memory < 1:
            raise ValueError(f"memory limit must be at least 1 byte, not {self.memory}")
        if self.cpu is not None and not self.cpu > 0:
            raise ValueError(f"cpu limit must be > 0 s, not {self.cpu}")

    @property
    def any(self) -> bool:
        """Whether either limit is set."""
        return self.memory is not None or self.cpu is not None

    def over(self, defaults: Limits) -> Limits:
        """These limits, each unset one taken from ``defaults`` (a task's over its
        scheduler's)."""
        return Limits(
            self.memory if self.memory is not None else defaults.memory,
            self.cpu if self.cpu is not None else defaults.cpu,
        )


NO_LIMITS: Final = Limits()


@dataclass(frozen=True, slots=True)
class Usage:
    """One sample of a job tree: resident bytes and CPU seconds."""

    rss: int
    cpu_s: float


def breach(limits: Limits, usage: Usage) -> str | None:
    """Why ``usage`` is past ``limits`` (memory first), such as ``memory limit 512 MB
    exceeded: 530 MB`` or ``cpu limit 30 s exceeded: 30.2 s``; None if it is within."""
    if limits.memory is not None and usage.rss > limits.memory:
        return (
            f"memory limit {limits.memory / MB:g} MB exceeded: "
            f"{_megabytes(usage.rss, limits.memory)} MB"
        )
    if limits.cpu is not None and usage.cpu_s > limits.cpu:
        return f"cpu limit {limits.cpu:g} s exceeded: {usage.cpu_s:.1f} s"
    return None


def _megabytes(size: int, limit: int) -> str:
    """``size`` in MB, with as many decimals as it takes to read above ``limit``."""
    for decimals in range(4):
        text = f"{size / MB:.{decimals}f}"
        if float(text) * MB > limit:
            return text
    return f"{size / MB:g}"


def over_limits(limits: Mapping[str, Limits], samples: Mapping[str, Usage]) -> dict[str, str]:
    """The jobs to stop, each with its reason: those of ``samples`` past their ``limits``.

    A job sampled without limits, or limited but not sampled (its tree was gone), is left
    alone. Changes nothing.
    """
    reasons: dict[str, str] = {}
    for job_id, usage in samples.items():
        job_limits = limits.get(job_id)
        reason = None if job_limits is None else breach(job_limits, usage)
        if reason is not None:
            reasons[job_id] = reason
    return reasons
