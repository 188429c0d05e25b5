"""What the producer library raises when the bus refuses a request or cannot be reached
(re-exported by :mod:`scheduler.producer.client`, where they were first defined)."""

from __future__ import annotations

from scheduler.protocol import Error


class SubmitError(Exception):
    """The bus refused a request (a submit, cancel, watch...); ``field`` names the part it
    blames. A refused registration is :class:`~scheduler.connect.RegistrationRefused`."""

    def __init__(self, error: Error) -> None:
        super().__init__(error.message)
        self.field = error.field


class BusConnectionLost(Exception):
    """The client was closed, or could not reach the bus in time."""
