"""Which bus a client tries next, given a list of bus URLs and what each answered.

A client given several buses (``--bus ws://a:8101,ws://b:8101``) tries them in order
and stays on the one that registers it. A bus that stands by names the leader: that URL
is tried next, at once, whether or not it is in the list. After a connection ends the
client starts again at the bus it was on (at the next one if that bus stopped
answering: a frozen bus may stay so), then goes round the list. Only when as many
tries in a row have failed as there are URLs does it wait out a backoff delay, so that a
failover costs one round of connection attempts, not a backoff per bus.

Pure: the caller opens the connections and reports back.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class UrlRing:
    """The URLs one client goes round (at least one), and where it is in them."""

    urls: tuple[str, ...]
    _at: int = 0
    _named: str | None = None
    """A leader a standby named, tried before the list."""
    _misses: int = field(default=0)

    def __post_init__(self) -> None:
        """Refuse an empty list."""
        if not self.urls:
            raise ValueError("no bus URL given")

    @property
    def current(self) -> str:
        """The URL to try now."""
        return self._named if self._named is not None else self.urls[self._at]

    def connected(self) -> None:
        """The current URL registered the client: forget the failures before it."""
        self._misses = 0

    def failed(self) -> bool:
        """The current URL could not be reached or registered nothing: move on to the
        next; return whether a whole round has failed, so a backoff delay is due (the
        count then starts again)."""
        if self._named is not None:
            self._named = None
        else:
            self._at = (self._at + 1) % len(self.urls)
        self._misses += 1
        if self._misses < len(self.urls):
            return False
        self._misses = 0
        return True

    def redirected(self, leader: str | None) -> bool:
        """The current URL stands by and named ``leader`` (None: none known): count it
        as a failure (:meth:`failed`, whose answer this returns) and try ``leader`` next
        unless it is the URL that just refused."""
        refusing = self.current
        due = self.failed()
        if leader is not None and leader != refusing:
            self._named = leader
        return due
