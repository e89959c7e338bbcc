"""Pub/sub transport between a node's store writes and its local sockets.

A node subscribes to its own channel ("node:ID", for messages addressed to one
of its connections) and to the channel of each session it has a local player
in, and to nothing else: a node receives only the events it must deliver, so
adding nodes adds capacity. One pub/sub connection per node.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis

log = logging.getLogger("lobby.bus")

Handler = Callable[[bytes | str], None]


class Bus(Protocol):
    async def start(self, node_id: str, handler: Handler) -> None: ...

    async def subscribe(self, session_id: str) -> None:
        """Returns once every event published after this call will be delivered."""
        ...

    async def unsubscribe(self, session_id: str) -> None: ...

    async def close(self) -> None: ...


class MemoryBus:
    """Delivery inside one process: the MemoryStore publishes straight into it."""

    def __init__(self) -> None:
        self._handler: Handler | None = None
        self._node_channel = ""
        self._subscribed: set[str] = set()

    async def start(self, node_id: str, handler: Handler) -> None:
        self._node_channel = f"node:{node_id}"
        self._handler = handler

    def publish(self, channel: str, message: str) -> None:
        if self._handler is not None and (
            channel in self._subscribed or channel == self._node_channel
        ):
            self._handler(message)

    async def subscribe(self, session_id: str) -> None:
        self._subscribed.add(session_id)

    async def unsubscribe(self, session_id: str) -> None:
        self._subscribed.discard(session_id)

    async def close(self) -> None:
        self._handler = None


class RedisBus:
    def __init__(self, client: aioredis.Redis, prefix: str = "lobby:") -> None:
        self._client = client
        self._prefix = prefix
        self._pubsub = client.pubsub(ignore_subscribe_messages=False)
        self._handler: Handler | None = None
        self._task: asyncio.Task[None] | None = None
        # Confirmations arrive in command order, so each channel's waiters are FIFO.
        self._waiters: dict[bytes, deque[asyncio.Future[None]]] = defaultdict(deque)
        self._session_prefix = f"{prefix}ev:".encode()

    def _channel(self, session_id: str) -> str:
        return f"{self._prefix}ev:{session_id}"

    async def start(self, node_id: str, handler: Handler) -> None:
        self._handler = handler
        await self._subscribe_channel(f"{self._prefix}node:{node_id}", wait=False)
        self._task = asyncio.create_task(self._listen(), name="lobby-bus")

    async def _subscribe_channel(self, channel: str, wait: bool = True) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[channel.encode()].append(fut)
        await self._pubsub.subscribe(channel)
        if wait:
            await fut

    async def subscribe(self, session_id: str) -> None:
        await self._subscribe_channel(self._channel(session_id))

    async def unsubscribe(self, session_id: str) -> None:
        await self._pubsub.unsubscribe(self._channel(session_id))

    async def _listen(self) -> None:
        while True:
            try:
                async for msg in self._pubsub.listen():
                    kind = msg["type"]
                    if kind == b"message" or kind == "message":
                        if self._handler is not None:
                            self._handler(msg["data"])
                    elif kind in (b"subscribe", "subscribe"):
                        waiters = self._waiters.get(msg["channel"])
                        if waiters:
                            fut = waiters.popleft()
                            if not fut.done():
                                fut.set_result(None)
                            if not waiters:
                                del self._waiters[msg["channel"]]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # redis-py reconnects and re-subscribes on the next read; events
                # published while the link was down are lost, which resume covers.
                log.warning("pub/sub connection lost (%s); reconnecting", exc)
                await asyncio.sleep(0.2)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        try:
            await self._pubsub.aclose()
        except Exception:
            pass
