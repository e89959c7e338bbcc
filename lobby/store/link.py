"""One multiplexed Redis connection for the store's hot path (one Redis only).

redis-py spends ~60 µs of the node's CPU per command here (a pooled connection
taken and given back, a retry wrapper, several coroutine layers, the packing:
docs/benchmarks.md), and a join or a leave is two or three script calls. Redis
answers a connection's commands in the order they came, so one connection can
carry every call at once: a call is its packed command written (coalesced with
the other calls of the same loop turn into one `send()`) and a future the reply
fills. hiredis (redis-py's own parser) packs and parses; redis-py's parser maps
error replies to its exception classes, so callers catch what they caught before.

A call whose connection breaks is sent again on a new connection, up to three
times with a short backoff, as redis-py's client is configured to do (lobby.redisconn):
a player's request does not fail because Redis restarted under an idle connection.
Like redis-py's retry, a call whose reply (not its command) was lost can run twice;
Sentinel and Cluster deployments, where failovers make that likely, keep redis-py
and the stores' exactly-once operation keys.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.backoff import AbstractBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


class ErrorReply(Exception):
    """hiredis' stand-in for an error reply, mapped by redis-py's parser."""


def parse_error(raw: ErrorReply) -> ResponseError:
    """The redis-py exception an error reply maps to (MOVED, NOSCRIPT, ...)."""
    return BaseParser.parse_error(str(raw))


def _reply(raw: Any) -> Any:
    if isinstance(raw, ErrorReply):
        return parse_error(raw)
    return raw


class _Batch:
    """The replies of commands written together, collected for one future."""

    __slots__ = ("fut", "left", "replies")

    def __init__(self, fut: asyncio.Future[Any], n: int) -> None:
        self.fut = fut
        self.left = n
        self.replies: list[Any] = []

    def add(self, reply: Any) -> bool:
        """True once the last reply is in (and the future has them)."""
        self.replies.append(reply)
        self.left -= 1
        if self.left:
            return False
        if not self.fut.done():  # else its caller was cancelled
            error = next((r for r in self.replies if isinstance(r, ResponseError)), None)
            if error is not None:
                self.fut.set_exception(error)
            else:
                self.fut.set_result(self.replies)
        return True


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ErrorReply)
        self.waiting: deque[asyncio.Future[Any] | _Batch] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self._out: list[bytes] = []
        self._flushing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses)
        transport = cast(asyncio.Transport, transport)
        self.transport = transport

    def send(self, packed: bytes, batch: int = 0) -> asyncio.Future[Any]:
        """The future of one command's reply; `batch`: `packed` holds that many
        commands and the future gets their replies as a list (the first error
        among them as an exception): one future a batch, not one per command."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.lost is not None:
            fut.set_exception(RedisConnectionError(str(self.lost)))
            return fut
        self.waiting.append(_Batch(fut, batch) if batch else fut)
        self._out.append(packed)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flushing = False
        if self.transport is not None and self._out and self.lost is None:
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                raw = self.reader.gets()
            except hiredis.ProtocolError as err:
                self._fail(err)
                assert self.transport is not None
                self.transport.abort()
                return
            if raw is False:
                return
            fut = self.waiting[0]
            if type(fut) is _Batch:
                if not fut.add(_reply(raw)):
                    continue  # more replies of the batch to come
                self.waiting.popleft()
                continue
            self.waiting.popleft()
            if fut.done():
                continue  # its caller was cancelled
            reply = _reply(raw)
            if isinstance(reply, ResponseError):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or RedisConnectionError("connection closed by the server"))

    def _fail(self, exc: Exception) -> None:
        if self.lost is None:
            self.lost = exc
        while self.waiting:
            waiting = self.waiting.popleft()
            fut = waiting.fut if type(waiting) is _Batch else waiting
            if not fut.done():
                fut.set_exception(RedisConnectionError(f"Redis link lost: {exc}"))


class Link:
    """Calls on one connection to host:port, made on first use and again after
    it breaks. `setup`: the commands a new connection sends first (AUTH, SELECT,
    CLIENT SETNAME), each of which must answer OK. `retries` and `backoff`: how a call
    whose connection broke is sent again (lobby.redisconn gives redis-py's settings)."""

    def __init__(self, host: str, port: int, setup: list[tuple[Any, ...]] | None = None,
                 connect_timeout: float = 2.0, retries: int = 0,
                 backoff: AbstractBackoff | None = None) -> None:
        self.host = host
        self.port = port
        self.setup = setup or []
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.backoff = backoff or NoBackoff()
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def call(self, *args: Any) -> Any:
        return await self._sent(hiredis.pack_command(args))

    async def batch(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Commands written together, in this order (their effects happen in this
        order); their replies, or the first error. Sent again as a whole when the
        connection breaks, like a redis-py pipeline."""
        if not commands:
            return []
        packed = b"".join([hiredis.pack_command(args) for args in commands])
        replies: list[Any] = await self._sent(packed, len(commands))
        return replies

    async def _sent(self, packed: bytes, batch: int = 0) -> Any:
        """`packed` sent (again on a new connection when this one breaks, up to
        `retries` times); its reply, or with `batch` the list of its replies."""
        for attempt in range(self.retries + 1):
            try:
                conn = self._conn
                if conn is None or conn.lost is not None:
                    conn = await self._connected()
                return await conn.send(packed, batch)
            except RedisConnectionError:
                if attempt == self.retries:
                    raise
                await asyncio.sleep(self.backoff.compute(attempt + 1))  # as redis-py counts
        raise AssertionError("unreachable")

    async def _connected(self) -> _Connection:
        # Callers arriving while a connection is being made wait for that one.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(_Connection, self.host, self.port)
                for command in self.setup:
                    await conn.send(hiredis.pack_command(command))
        except BaseException as err:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
            if isinstance(err, OSError | TimeoutError):
                raise RedisConnectionError(
                    f"Error connecting to {self.host}:{self.port}: {err}") from err
            raise
        self._conn = conn
        return conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.close()
