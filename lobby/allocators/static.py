"""The static allocator: every session gets the one configured game server.

This is today's behaviour (the game connected to a hardcoded localhost:6060),
kept as the default so a laptop needs no AWS account to run the whole flow.
The game-server lifecycle calls (register, heartbeat, deregister) are accepted
and do nothing (ServerLifecycle's defaults): there is no FleetIQ to tell.
"""

from __future__ import annotations

from lobby.allocators.base import Allocation, ServerLifecycle


class StaticAllocator(ServerLifecycle):
    def __init__(self, endpoint: str = "127.0.0.1:6060", server_id: str = "static") -> None:
        self._allocation = Allocation(server_id=server_id, endpoint=endpoint)

    async def allocate(self, session_id: str, player_ids: list[str]) -> Allocation:
        return self._allocation

    async def close(self) -> None:
        return None
