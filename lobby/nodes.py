"""Which lobby nodes are alive, and what each holds (GET /admin/nodes).

Each node in Redis mode refreshes one small key with a time to live; a node
that dies stops refreshing and drops out of the list within NODE_TTL_SECONDS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

NODE_TTL_SECONDS = 10
BEAT_SECONDS = 2.0

Info = Callable[[], dict[str, Any]]


class NodeRegistry:
    def __init__(self, redis: aioredis.Redis | None, prefix: str, node_id: str, info: Info
                 ) -> None:
        self._redis = redis
        self._head = f"{prefix}nodeinfo:"
        self._key = self._head + node_id
        self._info = info

    async def beat(self) -> None:
        if self._redis is not None:
            await self._redis.set(self._key, json.dumps(self._info()), ex=NODE_TTL_SECONDS)

    async def remove(self) -> None:
        if self._redis is not None:
            await self._redis.delete(self._key)

    async def nodes(self) -> list[dict[str, Any]]:
        if self._redis is None:
            return [self._info()]
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self._head) + "*"
        keys: list[bytes] = []
        async for key in self._redis.scan_iter(match=pattern, count=500):
            keys.append(key)
        raws = await self._redis.mget(keys) if keys else []
        found = [json.loads(r) for r in raws if r]
        return sorted(found, key=lambda n: n.get("node_id", ""))
