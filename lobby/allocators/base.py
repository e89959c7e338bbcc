"""The allocator interface the session lifecycle depends on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Allocation:
    server_id: str
    # "host:port" (IPv6 hosts in brackets: "[::1]:6060"), handed to clients as-is.
    endpoint: str


class NoServerAvailable(Exception):
    """No game server could be had (no capacity, or retries exhausted)."""


class Allocator(Protocol):
    async def allocate(self, session_id: str, player_ids: list[str]) -> Allocation:
        """Claim a game server for a session; raise NoServerAvailable when none can be had."""
        ...

    async def close(self) -> None: ...
