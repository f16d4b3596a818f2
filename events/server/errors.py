"""What can go wrong with an embedded nats-server."""

from __future__ import annotations

from events.errors import RanvierError


class ServerError(RanvierError, RuntimeError):
    """The embedded nats-server could not be found, started or stopped."""


class PortTakenError(ServerError):
    """A port the nats-server was told to listen on is taken."""


class ServerGaveUp(ServerError):
    """The supervised nats-server crashed too often to be started again."""
