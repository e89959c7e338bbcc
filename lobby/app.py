"""Assembles a lobby node from settings: store, bus, hub, handlers, sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import redis.asyncio as aioredis
from websockets.asyncio.server import Server, serve

from lobby.allocators.base import Allocator
from lobby.allocators.static import StaticAllocator
from lobby.bus import Bus, MemoryBus, RedisBus
from lobby.config import Settings
from lobby.handlers import Lobby
from lobby.hub import Hub
from lobby.server import SocketServer, push_many
from lobby.store.base import SessionStore
from lobby.store.memory import MemoryStore
from lobby.store.redis import RedisStore

log = logging.getLogger("lobby")


class LobbyNode:
    """One lobby process (or one of several, in-process, in tests)."""

    def __init__(self, settings: Settings, allocator: Allocator | None = None) -> None:
        self.settings = settings
        self.node_id = settings.node_id or secrets.token_hex(4)
        self.allocator = allocator or StaticAllocator(settings.game_server)
        self.store: SessionStore
        self.bus: Bus
        self._redis: aioredis.Redis | None = None
        if settings.redis_url:
            self._redis = aioredis.from_url(settings.redis_url, decode_responses=False)
            self.store = RedisStore(self._redis, settings.redis_prefix)
            self.bus = RedisBus(self._redis, settings.redis_prefix)
        else:
            memory_bus = MemoryBus()
            self.store = MemoryStore(memory_bus.publish)
            self.bus = memory_bus
        self.hub = Hub(self.bus, push_many)
        self.lobby = Lobby(settings, self.store, self.hub, self.allocator)
        self.sockets = SocketServer(
            self.lobby, self.node_id,
            rate=settings.rate_limit_per_second, burst=settings.rate_limit_burst,
        )
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def mode(self) -> str:
        return "redis" if self.settings.redis_url else "embedded"

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        s = self.settings
        await self.store.start()
        await self.bus.start(self.node_id, self.hub.on_message)
        self._server = await serve(
            self.sockets.handle, s.host, s.port,
            process_request=self.sockets.process_request,
            max_size=s.max_message_bytes,
            # Lobby frames are tiny JSON; per-message deflate would cost ~50 KiB
            # per connection for no gain (docs/benchmarks.md has the measurement).
            compression=None,
            ping_interval=s.ping_interval_seconds,
            ping_timeout=s.ping_interval_seconds,
            server_header="lobby",
        )
        self._tasks.append(asyncio.create_task(self._sweeper(), name="lobby-sweeper"))
        if self.mode == "embedded":
            log.warning(
                "EMBEDDED MODE: sessions live in this process's memory, one node only, lost "
                "on restart. Use --redis-url (LOBBY_REDIS_URL) to run several nodes."
            )
        else:
            log.info("redis mode: sessions in %s (prefix %r)", _redact(s.redis_url), s.redis_prefix)
        log.info("node %s listening on ws://%s:%d/ws", self.node_id, s.host, self.port)

    async def _sweeper(self) -> None:
        interval = self.settings.sweep_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                while await self.lobby.sweep() > 0:
                    pass
            except Exception:
                log.exception("sweep failed; retrying in %.1fs", interval)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self.bus.close()
        await self.lobby.close()
        await self.allocator.close()
        await self.store.close()

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Future()
        finally:
            await self.stop()


def _redact(url: str | None) -> str:
    if not url or "@" not in url:
        return url or ""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
