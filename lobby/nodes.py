"""Which lobby nodes are alive, and what each holds (GET /admin/nodes).

Each node in Redis mode refreshes its entry every BEAT_SECONDS; a node that
dies stops refreshing and drops out of the list within NODE_TTL_SECONDS (the
nodes' clocks must agree to within a few seconds, as NTP keeps them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

NODE_TTL_SECONDS = 10
BEAT_SECONDS = 2.0

Info = Callable[[], dict[str, Any]]


class NodeRegistry:
    """One Redis hash, node id -> its latest info with `seen_at`; an entry not
    refreshed within NODE_TTL_SECONDS is a dead node's and is dropped."""

    def __init__(self, redis: aioredis.Redis | None, prefix: str, node_id: str, info: Info
                 ) -> None:
        self._redis = redis
        # Beside the store's own liveness set (prefix + "nodes", the sweep's heartbeat):
        # this one carries what an operator reads (sockets, players, address).
        self._key = f"{prefix}nodeinfo"
        self._node_id = node_id
        self._info = info

    async def beat(self) -> None:
        if self._redis is not None:
            await self._redis.hset(self._key, self._node_id, json.dumps(self._info()))

    async def remove(self) -> None:
        if self._redis is not None:
            await self._redis.hdel(self._key, self._node_id)

    async def nodes(self) -> list[dict[str, Any]]:
        if self._redis is None:
            return [self._info()]
        raw = await self._redis.hgetall(self._key)
        now = time.time()
        live: list[dict[str, Any]] = []
        dead: list[bytes] = []
        for node_id, text in raw.items():
            info = json.loads(text)
            if now - info.get("seen_at", 0) < NODE_TTL_SECONDS:
                live.append(info)
            else:
                dead.append(node_id)
        if dead:
            await self._redis.hdel(self._key, *dead)
        return sorted(live, key=lambda n: n.get("node_id", ""))
