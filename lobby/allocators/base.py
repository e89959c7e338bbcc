"""The allocator interface the session lifecycle depends on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Allocation:
    server_id: str
    # "host:port" (IPv6 hosts in brackets: "[::1]:6060"), handed to clients as-is.
    endpoint: str


class NoServerAvailable(Exception):
    """No game server could be had (no capacity, or retries exhausted)."""


class ServerNotRegistered(Exception):
    """The game server is not (or no longer) registered: it should register again."""


class ServerBusy(Exception):
    """The game server is registered and still hosting a live session."""


class AllocatorUnavailable(Exception):
    """The game-server backend (FleetIQ) could not be reached or refused the call."""


# What a session looks like to the allocator's reconciliation: (state, server_id),
# or None when the session does not exist (any more).
SessionLookup = Callable[[str], Awaitable[tuple[str, str | None] | None]]


class Allocator(Protocol):
    async def allocate(self, session_id: str, player_ids: list[str]) -> Allocation:
        """Claim a game server for a session (and mark it UTILIZED);
        raise NoServerAvailable when none can be had."""
        ...

    async def close(self) -> None: ...


class ServerLifecycle:
    """The rest of a game server's life, with no-op defaults (the static allocator,
    and test allocators, use these). The FleetIQ allocator overrides every one."""

    async def release(self, server_id: str, session_id: str, reason: str) -> bool:
        """The session no longer uses this server: hand it back (FleetIQ: deregister;
        the server process registers again when it is ready)."""
        return False

    async def register_server(self, server_id: str, instance_id: str | None,
                              connection_info: str, data: str | None,
                              lookup: SessionLookup) -> dict[str, Any]:
        return {"server_id": server_id, "fleetiq": False}

    async def heartbeat(self, server_id: str) -> None:
        return None

    async def deregister_server(self, server_id: str) -> None:
        return None

    async def reconcile(self, lookup: SessionLookup) -> int:
        """Release servers claimed for sessions that do not use them; how many."""
        return 0

    def reconcile_interval(self) -> float | None:
        """Seconds until the next reconciliation is due (None: never)."""
        return None


def lifecycle(allocator: object) -> ServerLifecycle:
    """The allocator's lifecycle methods, or no-ops for one without them."""
    if isinstance(allocator, ServerLifecycle):
        return allocator
    return _NO_LIFECYCLE


_NO_LIFECYCLE = ServerLifecycle()
