"""Pub/sub transport between a node's store writes and its local sockets.

A node subscribes to its own channel ("node:ID", for messages addressed to one
of its connections) and to the channel of each session it has a local player
in, and to nothing else: a node receives only the events it must deliver, so
adding nodes adds capacity. One pub/sub connection per node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from lobby.store.keys import Keys

log = logging.getLogger("lobby.bus")

Handler = Callable[[bytes | str], None]
SUBSCRIBE_TIMEOUT = 5.0


class Bus(Protocol):
    async def start(self, node_id: str, handler: Handler) -> None: ...

    async def subscribe(self, session_id: str) -> None:
        """Returns once every event published after this call will be delivered."""
        ...

    def unsubscribe(self, session_id: str) -> None:
        """Takes effect in call order relative to subscribe() (never awaits)."""
        ...

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

    def unsubscribe(self, session_id: str) -> None:
        self._subscribed.discard(session_id)

    async def close(self) -> None:
        self._handler = None


class RedisBus:
    """One pub/sub connection per node, rebuilt whole when it breaks.

    redis-py's PubSub cannot reconnect while another coroutine reads from it, so
    the listener task owns the connection: when it breaks, the listener opens a
    new one and subscribes to every wanted channel in one command before
    declaring itself ready; (un)subscribes asked meanwhile only edit that set.

    SUBSCRIBE and UNSUBSCRIBE go through one queue, written by one task, so they
    reach Redis in the order they were asked: an unsubscribe of a session's last
    local member followed at once by a new local join must end subscribed.
    """

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys
        self._pubsub: PubSub | None = None
        self._handler: Handler | None = None
        self._task: asyncio.Task[None] | None = None
        self._node_channel = ""
        self._wanted: set[str] = set()
        self._ready = asyncio.Event()
        # Confirmations arrive in command order, so each channel's waiters are FIFO.
        self._waiters: dict[bytes, deque[asyncio.Future[None]]] = defaultdict(deque)
        self._outbox: asyncio.Queue[tuple[bool, str]] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        # Called once the connection is rebuilt and subscribed again: events of
        # the gap are lost, so the node reconciles its sockets with the store.
        self.on_restored: Callable[[], None] | None = None

    def _channel(self, session_id: str) -> str:
        return self._keys.channel(session_id)

    async def start(self, node_id: str, handler: Handler) -> None:
        self._handler = handler
        self._node_channel = self._keys.node_channel(node_id)
        await self._connect()
        self._task = asyncio.create_task(self._listen(), name="lobby-bus")
        self._writer_task = asyncio.create_task(self._write(), name="lobby-bus-writer")

    async def _connect(self) -> set[str]:
        """Open the connection subscribed to every wanted channel; returns those."""
        channels = set(self._wanted)
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await pubsub.ssubscribe(self._node_channel, *channels)
        self._pubsub = pubsub
        self._ready.set()
        return channels

    async def subscribe(self, session_id: str) -> None:
        channel = self._channel(session_id)
        self._wanted.add(channel)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[channel.encode()].append(fut)
        self._outbox.put_nowait((True, channel))
        # Bounded: with Redis gone, the request fails instead of hanging.
        await asyncio.wait_for(fut, SUBSCRIBE_TIMEOUT)

    def unsubscribe(self, session_id: str) -> None:
        channel = self._channel(session_id)
        self._wanted.discard(channel)
        self._outbox.put_nowait((False, channel))

    async def _write(self) -> None:
        while True:
            subscribe, channel = await self._outbox.get()
            await self._ready.wait()
            pubsub = self._pubsub
            if pubsub is None:
                continue  # the rebuilt connection subscribes to exactly what is wanted
            try:
                if subscribe:
                    await pubsub.ssubscribe(channel)
                else:
                    await pubsub.sunsubscribe(channel)
            except Exception as exc:  # the listener is rebuilding the connection
                log.debug("pub/sub command on %s failed: %s", channel, exc)

    def _confirm(self, channel: bytes) -> None:
        waiters = self._waiters.get(channel)
        while waiters:
            fut = waiters.popleft()
            if not fut.done():  # a waiter that timed out is skipped, not confirmed
                fut.set_result(None)
                break
        if not waiters:
            self._waiters.pop(channel, None)

    async def _listen(self) -> None:
        while True:
            try:
                if self._pubsub is None:
                    channels = await self._connect()
                    log.warning("pub/sub connection restored (%d channels)", len(channels))
                    if self.on_restored is not None:
                        self.on_restored()
                    # Subscribes caught by the break are covered by the full resubscribe;
                    # ones asked during it are still queued and confirmed as usual.
                    for channel in channels:
                        for fut in self._waiters.pop(channel.encode(), ()):
                            if not fut.done():
                                fut.set_result(None)
                assert self._pubsub is not None
                while True:
                    msg = await self._pubsub.parse_response(block=True)
                    if msg is None:
                        continue
                    kind = msg[0]
                    if kind == b"smessage":
                        if self._handler is not None:
                            self._handler(msg[2])
                    elif kind == b"ssubscribe":
                        self._confirm(msg[1])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Events published while the link is down are lost; clients
                # recover them through resume (a fresh snapshot).
                log.warning("pub/sub connection lost (%s); reconnecting", exc)
                self._ready.clear()
                broken, self._pubsub = self._pubsub, None
                if broken is not None:
                    with contextlib.suppress(Exception):
                        await broken.aclose()
                await asyncio.sleep(0.2)

    async def close(self) -> None:
        for task in (self._task, self._writer_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pubsub.aclose(), 2)
