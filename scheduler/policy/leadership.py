"""Who leads among buses sharing one database: the pure rules of the election.

Several buses open the same PostgreSQL journal; one leads (it holds an advisory lock on
its own session and has bumped the leader epoch), the others stand by. The I/O shell
(:mod:`scheduler.bus.leadership`) tries the lock, bumps the epoch, watches the lock's
session and carries out what :class:`Leadership` decides:

- a standby tries the lock every ``retry_s`` seconds (:meth:`Leadership.next_try`); when
  a try wins it is told the new epoch (:meth:`Leadership.elected`) and leads;
- a leader checks its lock session every ``check_s`` seconds; the session ending, a check
  that fails or takes longer than ``check_timeout_s``, or the journal refusing a write
  under a newer epoch is a loss (:meth:`Leadership.lost`): the answer is always
  :class:`StepDown`, so the shell stops dispatching at once. A leader never goes back to
  standing by in the same process: what it holds in memory may be older than what the
  new leader journals, and only a fresh start (which reads the journal) is sure not to
  hand any of it out;
- a leader's check renews its **lease** in the database (on the database's clock): a
  standby that fails to get the lock yet sees the lease not renewed for longer than
  ``lease_s`` (:meth:`Leadership.lease_stale`) deposes the holder
  (:meth:`Leadership.should_depose`): the shell ends the holder's lock session, which
  releases the lock, and takes it at the next try. A frozen leader (SIGSTOP, a VM
  pause) keeps its session open, so this is what ends its lead; once thawed, its next
  journal write is fenced by the epoch and its lock session is gone;
- a standby answers every client with :meth:`Leadership.refusal` (who leads, if known).

Time is an argument (monotonic seconds); nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Role = Literal["standby", "leader", "fenced"]
"""Where a bus stands: waiting for the lock, leading, or stopped after losing it."""

LossCause = Literal["lock_lost", "check_failed", "store_fenced", "deposed"]
"""Why a leader stops: its lock session ended, a check of it failed or hung, the
journal refused a write because another bus bumped the epoch, or its lease renewal
found the epoch bumped (another bus deposed it)."""

DEFAULT_RETRY_S: Final = 0.5
"""Seconds between two tries of the lock by a standby."""

DEFAULT_CHECK_S: Final = 0.5
"""Seconds between two checks of its lock session by a leader."""

DEFAULT_CHECK_TIMEOUT_S: Final = 1.0
"""Seconds a check of the lock session may take before the leader counts it lost."""

DEFAULT_LEADER_LEASE_S: Final = 3.0
"""Seconds a leader's lease lasts unrenewed before a standby may depose it (it renews
it at every check, every ``check_s``)."""

DEFAULT_TAKEOVER_HOLD_S: Final = 20.0
"""Seconds a bus that deposed a frozen leader keeps the jobs schedulers held there: they
reach it only once they give the frozen bus up (its pings unanswered, about 12 s, see
:data:`scheduler.connect.KEEPALIVE`) and stop those jobs on the way (their grace), so
handing them out sooner could run one twice at once."""

EXIT_FENCED: Final = 75
"""Exit status of a bus that stepped down (EX_TEMPFAIL: a supervisor should start it
again, and it comes back as a standby)."""

_CAUSES: Final[dict[LossCause, str]] = {
    "lock_lost": "its database session holding the leader lock ended",
    "check_failed": "a check of its leader lock failed or did not answer in time",
    "store_fenced": "the journal refused a write: another bus leads with a newer epoch",
    "deposed": "another bus took the lead (the leader epoch moved on while it renewed)",
}


@dataclass(frozen=True, slots=True)
class StepDown:
    """Stop dispatching now, then exit with ``exit_code``; ``reason`` says why."""

    cause: LossCause
    reason: str
    exit_code: int = EXIT_FENCED


@dataclass
class Leadership:
    """The election state of one bus, advertised to clients as ``advertise``.

    ``role`` and ``epoch`` change only through the methods below; ``leader`` is the URL
    of the bus the database names as leader (the last one seen), None until one is seen.
    """

    advertise: str
    retry_s: float = DEFAULT_RETRY_S
    check_s: float = DEFAULT_CHECK_S
    check_timeout_s: float = DEFAULT_CHECK_TIMEOUT_S
    lease_s: float = DEFAULT_LEADER_LEASE_S
    takeover_hold_s: float = DEFAULT_TAKEOVER_HOLD_S
    role: Role = "standby"
    epoch: int | None = None
    leader: str | None = None
    _tried_at: float | None = None
    _checked_at: float | None = None
    _deposed_at: float | None = None

    def __post_init__(self) -> None:
        """Refuse intervals that cannot work, naming the field."""
        for name in ("retry_s", "check_s", "check_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 s, not {getattr(self, name)}")
        check_lease(self.lease_s, self.check_s + self.check_timeout_s)

    def next_try(self) -> float | None:
        """When (monotonic seconds) a standby tries the lock next: at once on the first
        try, then ``retry_s`` after the last; None unless standing by."""
        if self.role != "standby":
            return None
        return 0.0 if self._tried_at is None else self._tried_at + self.retry_s

    def tried(self, won: bool, holder: str | None, now: float) -> bool:
        """Record a try of the lock at ``now`` and the leader the database names
        (``holder``, None if unknown); return whether this bus should now take the lead
        (bump the epoch and report it to :meth:`elected`)."""
        self._tried_at = now
        if holder is not None and not won:
            self.leader = holder
        return won and self.role == "standby"

    def elected(self, epoch: int, now: float) -> None:
        """This bus leads under ``epoch`` from ``now`` (it holds the lock and bumped the
        epoch): ``role`` becomes leader, ``leader`` its own URL. ValueError if it was
        not standing by or the epoch does not grow."""
        if self.role != "standby":
            raise ValueError(f"elected while {self.role}")
        if self.epoch is not None and epoch <= self.epoch:
            raise ValueError(f"epoch {epoch} does not follow {self.epoch}")
        self.role, self.epoch, self.leader = "leader", epoch, self.advertise
        self._checked_at = now

    def next_check(self) -> float | None:
        """When a leader checks its lock session next; None unless leading."""
        if self.role != "leader" or self._checked_at is None:
            return None
        return self._checked_at + self.check_s

    def checked(self, ok: bool, took: float, now: float) -> StepDown | None:
        """Record a check of the lock session that ended at ``now`` after ``took``
        seconds: a failed or slow check makes the leader step down (see :meth:`lost`)."""
        self._checked_at = now
        if ok and took <= self.check_timeout_s:
            return None
        return self.lost("check_failed")

    def lost(self, cause: LossCause) -> StepDown:
        """The lock (or the epoch) is lost for ``cause``: the bus is fenced from now on
        and must stop dispatching and exit; returns that decision (the same one however
        often it is called)."""
        self.role = "fenced"
        return StepDown(cause, f"{self.advertise} stops leading: {_CAUSES[cause]}")

    def lease_stale(self, age_s: float | None) -> bool:
        """Whether a lease last renewed ``age_s`` seconds ago (by the database's clock;
        None: no lease row) has run out: it is older than ``lease_s``."""
        return age_s is not None and age_s > self.lease_s

    def should_depose(self, won: bool, age_s: float | None, now: float) -> bool:
        """After a try of the lock at ``now`` that ``won`` or not, with the holder's lease
        ``age_s`` old: whether to end the holder's lock session. Only a standby that
        lost the try deposes a holder whose lease ran out, and at most once per lease
        period (the next try takes the lock; if another standby takes it first, its
        fresh lease stops the others)."""
        if won or self.role != "standby" or not self.lease_stale(age_s):
            return False
        if self._deposed_at is not None and now < self._deposed_at + self.lease_s:
            return False
        self._deposed_at = now
        return True

    def takeover_promise(self, wall: float, age_s: float | None) -> float | None:
        """Until when (wall seconds, from ``wall`` now) the journal should promise the
        schedulers their jobs as this bus takes the lead, the last leader's lease being
        ``age_s`` old as it won: ``takeover_hold_s`` from now if that leader was frozen
        (this bus deposed it, or another standby did: its lease ran out), since its
        schedulers may still be stuck on it; else None (the usual scheduler lease)."""
        frozen = self._deposed_at is not None or self.lease_stale(age_s)
        return wall + self.takeover_hold_s if frozen else None

    def named_leader(self) -> str | None:
        """The leader a bus that does not lead names to clients: the last one seen,
        never itself (None if it knows no other)."""
        return None if self.leader == self.advertise else self.leader

    def refusal(self) -> str:
        """What a bus that does not lead tells a client that connects to it."""
        state = "a standby" if self.role == "standby" else "no longer the leader"
        leader = self.named_leader()
        if leader is None:
            return f"{self.advertise} is {state} and knows no leader yet: try again shortly"
        return f"{self.advertise} is {state}; the leader is {leader}"

    def health(self) -> dict[str, object]:
        """The ``/healthz`` body of this bus while it does not serve jobs."""
        return {"ok": self.role == "standby", "role": self.role, "leader": self.leader}


def check_lease(lease_s: float, renew_within_s: float, name: str = "lease_s") -> None:
    """Refuse a lease of ``lease_s`` seconds that a live leader, renewing it within
    ``renew_within_s`` seconds (its check interval plus the check's timeout), could not
    keep: ValueError naming the field (``name``) and the rule."""
    if not lease_s > renew_within_s:
        raise ValueError(
            f"{name} must be more than {renew_within_s:g} s (the leader renews its lease"
            f" every check, which may take that long), not {lease_s:g}"
        )
