"""Pub/sub transport between a node's store writes and its local sockets.

A node subscribes to its own channel (`Keys.node_channel`, for messages addressed
to one of its connections) and to the channel of each session it has a local
player in (`Keys.channel`, on the session's bucket slot), and to nothing else: a
node receives only the events it must deliver, so adding nodes adds capacity.
Channels are sharded (SSUBSCRIBE): on a cluster an event goes to its slot's
master only. One pub/sub connection per node per master.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.crc import key_slot
from redis.exceptions import ConnectionError, ResponseError, SlotNotCoveredError

from lobby.store.keys import Keys
from lobby.store.link import ErrorReply, parse_error

log = logging.getLogger("lobby.bus")

Handler = Callable[[bytes | str], None]
SUBSCRIBE_TIMEOUT = 5.0
RETRY_MIN, RETRY_MAX = 0.1, 1.0  # seconds before subscribing lost channels again
MASTER_CHECK_SECONDS = 1.0  # Sentinel: how often the sentinels are asked for the master
HEALTH_SECONDS = 5.0  # an idle connection is PINGed this often, and dropped if silent
READ_BYTES = 1 << 16  # at most, per read of a pub/sub connection

_MAIN = "main"  # the one master of a Redis or a Sentinel deployment
_SUB, _UNSUB, _FIX, _PING, _STOP = "sub", "unsub", "fix", "ping", "stop"
_REPLY_KIND = {b"SSUBSCRIBE": b"ssubscribe", b"SUNSUBSCRIBE": b"sunsubscribe",
               b"PING": b"pong"}


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
    """Sharded pub/sub (SSUBSCRIBE) for one Redis, Sentinel or Redis Cluster.

    One pub/sub connection per master (one in all for one Redis or Sentinel),
    each read by a task of its own: a message is handled the moment it arrives,
    whichever master sends it. A channel lives on its hash slot's master, so on
    a cluster the bus keeps, per channel, the connection its SSUBSCRIBE went to.

    Every command goes out through one queue, written by one task, so SSUBSCRIBE
    and SUNSUBSCRIBE reach Redis in the order they were asked: an unsubscribe of
    a session's last local member followed at once by a new local join must end
    subscribed. Replies come back in command order on each connection, which is
    how a `sunsubscribe` Redis sends by itself (the slot moved away) is told
    from the reply to our own SUNSUBSCRIBE.

    A channel is lost when its connection breaks, when its master stops owning
    its slot (reshard: Redis sends `sunsubscribe`), or when Sentinel names
    another master. The bus then subscribes it again at the current owner
    (refreshing a cluster's slot map first) and, once every lost channel is
    back, calls `on_restored`: events of the gap are gone, so the node
    reconciles its sockets with the store.

    redis-py's ClusterPubSub is not used: its get_sharded_message polls the
    masters' connections in turn (a message waits for the other masters' read
    timeouts, or the loop spins), and it learns about moved slots only when the
    cluster client refreshes its slot map for another reason.
    """

    def __init__(self, client: aioredis.Redis | RedisCluster, keys: Keys) -> None:
        self._client = client
        self.keys = keys
        self._cluster = client if isinstance(client, RedisCluster) else None
        pool = None if self._cluster is not None else client.connection_pool
        self._sentinel_pool = pool if isinstance(pool, SentinelConnectionPool) else None
        self._handler: Handler | None = None
        self._node_channel = b""
        self._wanted: set[bytes] = set()  # includes the node channel
        self._placed: dict[bytes, _Link] = {}  # where each channel's SSUBSCRIBE went
        self._confirmed: set[bytes] = set()  # placed and confirmed there
        self._links: dict[str, _Link] = {}
        # subscribe() calls the writer has taken up whose channel has no SSUBSCRIBE
        # on its way (master out of reach, or the command failed). The next one
        # sent takes them along: it goes out after each of their calls.
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = defaultdict(list)
        self._connecting: dict[str, asyncio.Task[None]] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        # Lost channels not yet subscribed again; None while nothing is lost.
        self._missing: set[bytes] | None = None
        self._fix: asyncio.TimerHandle | None = None
        self._fix_delay = RETRY_MIN
        self._refresh = False
        self._closing = False
        self.received = 0  # messages read off the wire (events and node messages)
        self.dropped = 0  # of those, messages of channels no longer wanted
        self.losses = 0  # connections found broken or silent, channels moved away
        self.restores = 0
        # Set and replaced at each restore rather than cleared: a clear could
        # hide the restore from a waiter that had not woken yet.
        self._restore_event = asyncio.Event()
        self._loss_event = asyncio.Event()  # the same, for losses
        self.health_seconds = HEALTH_SECONDS
        # Called once lost channels are subscribed again (see the class docstring).
        self.on_restored: Callable[[], None] | None = None

    # the contract -----------------------------------------------------------
    async def start(self, node_id: str, handler: Handler) -> None:
        self._handler = handler
        self._node_channel = self.keys.node_channel(node_id).encode()
        if self._cluster is not None:
            await self._cluster.initialize()  # the slot map
        # The first connection is opened here so that a Redis that is not there
        # fails the node's start instead of being retried in the background.
        await self._link(self._owner(self._node_channel))
        self._tasks.append(asyncio.create_task(self._write(), name="lobby-bus-writer"))
        self._tasks.append(asyncio.create_task(self._watch(), name="lobby-bus-watch"))
        await self._subscribe(self._node_channel)

    async def subscribe(self, session_id: str) -> None:
        await self._subscribe(self.keys.channel(session_id).encode())

    def unsubscribe(self, session_id: str) -> None:
        channel = self.keys.channel(session_id).encode()
        self._wanted.discard(channel)
        self._queue.put_nowait((_UNSUB, channel))

    def wants(self, session_id: str) -> bool:
        """Whether this node is (or is getting) subscribed to the session's events."""
        return self.keys.channel(session_id).encode() in self._wanted

    async def close(self) -> None:
        self._closing = True
        if self._fix is not None:
            self._fix.cancel()
        # The writer is stopped by a message, not cancelled: a cancellation that
        # lands inside redis-py's send path can be swallowed there (seen here),
        # leaving the task alive.
        self._queue.put_nowait((_STOP, None))
        writer, *others = self._tasks or [None]
        tasks = [t for t in others if t is not None]
        tasks += [link.task for link in self._links.values() if link.task]
        tasks += self._connecting.values()
        if self._refreshing is not None:
            tasks.append(self._refreshing)
        for task in tasks:
            task.cancel()
        if writer is not None:
            done, _ = await asyncio.wait([writer], timeout=2)
            if not done:
                tasks.append(writer)
                writer.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 2)
        for link in list(self._links.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link.conn.disconnect(), 2)
        self._links.clear()

    async def restored(self, after: int) -> None:
        """Returns once `restores` exceeds `after`: read the counter before the
        fault, then await this (a restore that came in between is not missed)."""
        while self.restores <= after:
            await self._restore_event.wait()

    async def lost(self, after: int) -> None:
        """Returns once `losses` exceeds `after` (as restored(), for losses)."""
        while self.losses <= after:
            await self._loss_event.wait()

    def _count_loss(self) -> None:
        self.losses += 1
        event, self._loss_event = self._loss_event, asyncio.Event()
        event.set()

    async def _subscribe(self, channel: bytes) -> None:
        self._wanted.add(channel)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((_SUB, (channel, fut)))
        # Bounded: with Redis gone, the request fails instead of hanging.
        await asyncio.wait_for(fut, SUBSCRIBE_TIMEOUT)

    # where channels live ------------------------------------------------------
    def _owner(self, channel: bytes) -> str:
        """The name of the master holding the channel's slot (per the slot map)."""
        if self._cluster is None:
            return _MAIN
        node = self._cluster.nodes_manager.get_node_from_slot(key_slot(channel))
        return node.name

    def _group(self, channel: bytes) -> int:
        """Channels sent in one SSUBSCRIBE must share a slot on a cluster."""
        return 0 if self._cluster is None else key_slot(channel)

    async def _link(self, name: str) -> _Link:
        """The open connection to master `name`, opened if there is none."""
        link = self._links.get(name)
        if link is not None and not link.closed:
            return link
        conn = self._new_connection(name)
        # Bounded like subscribe(): a master that does not answer is retried later.
        await asyncio.wait_for(conn.connect(), SUBSCRIBE_TIMEOUT)
        link = _Link(name, conn)
        link.task = asyncio.create_task(self._read(link), name=f"lobby-bus-{name}")
        self._links[name] = link
        return link

    def _open_link(self, name: str) -> _Link | None:
        """The open connection to `name`, or None while it is being opened in the
        background: a master that does not answer must not hold up the writer
        (and with it every subscribe on the healthy masters)."""
        link = self._links.get(name)
        if link is not None and not link.closed:
            return link
        if name not in self._connecting and not self._closing:
            self._connecting[name] = asyncio.create_task(
                self._connect(name), name=f"lobby-bus-connect-{name}")
        return None

    async def _connect(self, name: str) -> None:
        try:
            await self._link(name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("pub/sub: cannot reach %s (%s); retrying", name, exc)
            self._schedule_fix(refresh=True, backoff=True)
        else:
            self._queue.put_nowait((_FIX, None))  # subscribe what waits for it
        finally:
            self._connecting.pop(name, None)

    def _new_connection(self, name: str) -> Connection:
        if self._cluster is not None:
            node = self._cluster.nodes_manager.get_node(node_name=name)
            if node is None:
                raise ConnectionError(f"{name} is not in the cluster's slot map")
            cls, kwargs = node.connection_class, dict(node.connection_kwargs)
        else:
            pool = self._client.connection_pool
            cls, kwargs = pool.connection_class, dict(pool.connection_kwargs)
        # Its own connection, outside the pools: a pub/sub connection is held for
        # good, and its replies are parsed here (RESP2 bytes: no push handling per
        # message; no health-check PINGs of its own).
        kwargs.update(decode_responses=False, health_check_interval=0, protocol=2)
        return cls(**kwargs)

    # writing ----------------------------------------------------------------
    async def _write(self) -> None:
        while not self._closing:
            op, arg = await self._queue.get()
            if op == _STOP:
                return
            try:
                if op == _SUB:
                    channel, fut = arg
                    # Only now: an SSUBSCRIBE sent before this point (before an
                    # unsubscribe that came between) must not release this call.
                    self._waiters[channel].append(fut)
                    await self._send_subscribe([channel])
                elif op == _UNSUB:
                    await self._send_unsubscribe(arg)
                elif op == _FIX:
                    await self._resubscribe()
                elif op == _PING:
                    if not arg.closed:
                        arg.ping_at = time.monotonic()
                        await self._send(arg, b"PING", [b""])
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one command stop the writer
                log.exception("pub/sub command %s failed", op)

    async def _send(self, link: _Link, command: bytes, channels: list[bytes]) -> bool:
        kind = _REPLY_KIND[command]
        sent = _Sent(kind, deque(channels))
        if command == b"SSUBSCRIBE":
            for channel in channels:
                waiters = self._waiters.pop(channel, None)
                if waiters:
                    sent.waiters[channel] = waiters
        link.sent.append(sent)
        try:
            await link.conn.send_command(command, *([] if command == b"PING" else channels),
                                         check_health=False)
            return True
        except Exception as exc:
            await self._lose(link, exc)
            return False

    async def _send_subscribe(self, channels: list[bytes]) -> None:
        """SSUBSCRIBE the channels at their owners (one command per owner and slot)."""
        groups: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        for channel in channels:
            try:
                groups[(self._owner(channel), self._group(channel))].append(channel)
            except SlotNotCoveredError:
                self._unplace(channel)
                self._schedule_fix(refresh=True)
        for (name, _), group in groups.items():
            link = self._open_link(name)
            if link is None:  # subscribed once the connection is up
                for channel in group:
                    self._unplace(channel)
                continue
            for channel in group:
                old = self._placed.get(channel)
                if old is not None and old is not link and not old.closed:
                    await self._send(old, b"SUNSUBSCRIBE", [channel])
                self._placed[channel] = link
                self._confirmed.discard(channel)
            await self._send(link, b"SSUBSCRIBE", group)

    async def _send_unsubscribe(self, channel: bytes) -> None:
        if channel not in self._wanted:
            # subscribe() calls before this unsubscribe() that no SSUBSCRIBE took
            # along (their master was out of reach): they end unsubscribed anyway.
            for fut in self._waiters.pop(channel, ()):
                if not fut.done():
                    fut.set_result(None)
        link = self._unplace(channel)
        if self._missing is not None:
            self._missing.discard(channel)
            self._maybe_restored()
        if link is not None and not link.closed:
            await self._send(link, b"SUNSUBSCRIBE", [channel])

    def _unplace(self, channel: bytes) -> _Link | None:
        self._confirmed.discard(channel)
        return self._placed.pop(channel, None)

    async def _resubscribe(self) -> None:
        """Subscribe every wanted channel that has no place (lost, or never placed)."""
        self._fix = None
        if self._cluster is not None and self._refresh:
            # In the background, like connecting: a master that hangs must not
            # hold up the writer. Its completion asks for this again.
            self._refresh = False
            if self._refreshing is None:
                self._refreshing = asyncio.create_task(self._refresh_map(),
                                                       name="lobby-bus-slots")
            return
        if self._refreshing is not None:
            return
        todo = [ch for ch in self._wanted if ch not in self._placed]
        if todo:
            await self._send_subscribe(todo)

    async def _refresh_map(self) -> None:
        assert self._cluster is not None
        try:
            await asyncio.wait_for(self._cluster.nodes_manager.initialize(),
                                   SUBSCRIBE_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("pub/sub: slot map refresh failed (%s); retrying", exc)
            self._schedule_fix(refresh=True, backoff=True)
        else:
            self._queue.put_nowait((_FIX, None))
        finally:
            self._refreshing = None

    def _schedule_fix(self, refresh: bool = False, backoff: bool = False) -> None:
        self._refresh |= refresh
        if self._fix is not None or self._closing:
            return
        delay = self._fix_delay
        if backoff:
            self._fix_delay = min(self._fix_delay * 2, RETRY_MAX)
        self._fix = asyncio.get_running_loop().call_later(
            delay, self._queue.put_nowait, (_FIX, None))

    # reading ----------------------------------------------------------------
    async def _read(self, link: _Link) -> None:
        """Replies and messages off the connection's stream, parsed by hiredis here:
        redis-py's read_response costs ~10 us a message (a timeout context, its
        parser's await of the stream per reply), and an event is one message.
        redis-py opened the connection (TLS, AUTH, HELLO, Sentinel's master) and
        still writes to it; only reading is ours, once it is set up."""
        stream: asyncio.StreamReader = link.conn._reader  # type: ignore[assignment]
        parser = hiredis.Reader(replyError=ErrorReply)
        while True:
            try:
                data = await stream.read(READ_BYTES)
                if not data:
                    raise ConnectionError("the connection was closed by the server")
                parser.feed(data)
                msg = parser.gets()
                while msg is not False:
                    if isinstance(msg, ErrorReply):
                        self._refused(link, parse_error(msg))
                    else:
                        self._on_reply(link, msg)
                    msg = parser.gets()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._lose(link, exc)
                return

    def _on_reply(self, link: _Link, msg: Any) -> None:
        # A connection holding no subscriptions has left pub/sub mode: its
        # PING gets a plain PONG.
        kind = msg[0] if isinstance(msg, list) else b"pong"
        if kind == b"smessage":
            self.received += 1
            if msg[1] in self._wanted and self._handler is not None:
                try:
                    self._handler(msg[2])
                except Exception:
                    log.exception("bus handler failed")
            else:
                self.dropped += 1
            return
        head = link.sent[0] if link.sent else None
        if head is not None and head.kind == kind and (
                kind == b"pong" or head.channels[0] == msg[1]
        ):
            head.channels.popleft()
            if not head.channels:
                link.sent.popleft()
            if kind == b"ssubscribe":
                self._confirm(link, msg[1], head.waiters.pop(msg[1], ()))
            elif kind == b"pong":
                link.ping_at = 0.0
        elif kind == b"sunsubscribe":
            self._dropped_by_server(link, msg[1])

    def _confirm(self, link: _Link, channel: bytes, waiters: Iterable[asyncio.Future[None]]
                 ) -> None:
        if self._placed.get(channel) is link:
            self._confirmed.add(channel)
            self._fix_delay = RETRY_MIN  # things work again
            if self._missing is not None:
                self._missing.discard(channel)
                self._maybe_restored()
        for fut in waiters:
            if not fut.done():  # one that timed out is gone
                fut.set_result(None)

    def _hand_back(self, sent: _Sent) -> None:
        """A command that will get no confirmation: its waiters wait for the next."""
        for channel, waiters in sent.waiters.items():
            self._waiters[channel].extend(w for w in waiters if not w.done())
        sent.waiters.clear()

    def _refused(self, link: _Link, err: ResponseError) -> None:
        """An error reply: to our oldest command still waiting for replies."""
        head = link.sent.popleft() if link.sent else None
        log.warning("pub/sub: %s refused %s: %s", link.name,
                    head.kind.decode() if head else "a command", err)
        if head is None or head.kind != b"ssubscribe":
            return
        self._hand_back(head)
        for channel in head.channels:
            if self._placed.get(channel) is link:
                self._unplace(channel)
        # MOVED (our slot map is stale) or a slot in transit: ask again, later.
        self._schedule_fix(refresh=True, backoff=True)

    def _dropped_by_server(self, link: _Link, channel: bytes) -> None:
        """Redis unsubscribed us by itself: the channel's slot left this master."""
        if self._placed.get(channel) is not link:
            return
        self._unplace(channel)
        if channel in self._wanted:
            self._count_loss()
            log.warning("pub/sub: %s gave up %r (slot moved); subscribing at its new owner",
                        link.name, channel)
            self._lost([channel])
            self._schedule_fix(refresh=True)

    async def _lose(self, link: _Link, exc: BaseException | str) -> None:
        """The connection broke (or leads to a master that is no longer one)."""
        if link.closed:
            return
        link.closed = True
        self._count_loss()
        if self._links.get(link.name) is link:
            del self._links[link.name]
        lost = [ch for ch, where in self._placed.items() if where is link]
        for channel in lost:
            self._unplace(channel)
        for sent in link.sent:
            self._hand_back(sent)
        link.sent.clear()
        wanted = [ch for ch in lost if ch in self._wanted]
        if not self._closing:
            log.warning("pub/sub connection to %s lost (%s); %d channel(s) to restore",
                        link.name, exc, len(wanted))
            if wanted:
                self._lost(wanted)
            self._schedule_fix(refresh=True, backoff=True)
        if link.task is not None and link.task is not asyncio.current_task():
            link.task.cancel()
        with contextlib.suppress(Exception):
            await link.conn.disconnect(nowait=True)

    def _lost(self, channels: list[bytes]) -> None:
        if self._missing is None:
            self._missing = set()
        self._missing.update(channels)

    def _maybe_restored(self) -> None:
        if self._missing or self._missing is None:
            return
        self._missing = None
        self.restores += 1
        event, self._restore_event = self._restore_event, asyncio.Event()
        event.set()
        log.warning("pub/sub subscriptions restored")
        if self.on_restored is not None:
            self.on_restored()

    # health -----------------------------------------------------------------
    async def _watch(self) -> None:
        """Finds what no error reports: a connection that went silent, and (behind
        Sentinel) a master that was demoted while our connection stays open: it
        keeps serving its old subscribers for a while after a failover."""
        last_ping = time.monotonic()
        while True:
            await asyncio.sleep(min(MASTER_CHECK_SECONDS, self.health_seconds / 2))
            if self._sentinel_pool is not None:
                await self._check_master()
            now = time.monotonic()
            for link in list(self._links.values()):
                if link.ping_at and now - link.ping_at > self.health_seconds:
                    await self._lose(link, "no answer to PING")
            if now - last_ping >= self.health_seconds:
                last_ping = now
                for link in list(self._links.values()):
                    if not link.ping_at:
                        self._queue.put_nowait((_PING, link))

    async def _check_master(self) -> None:
        assert self._sentinel_pool is not None
        try:
            address = await asyncio.wait_for(self._sentinel_pool.get_master_address(),
                                             MASTER_CHECK_SECONDS * 2)
        except Exception as exc:
            log.debug("pub/sub: sentinels did not name a master: %s", exc)
            return
        link = self._links.get(_MAIN)
        if link is not None and (link.conn.host, link.conn.port) != tuple(address):
            await self._lose(link, f"the master is now {address[0]}:{address[1]}")


@dataclass(slots=True)
class _Sent:
    """A command on a connection, and the replies it still has to get."""

    kind: bytes
    channels: deque[bytes]
    # subscribe() calls this SSUBSCRIBE's confirmation releases, per channel.
    waiters: dict[bytes, list[asyncio.Future[None]]] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Link:
    """One pub/sub connection to one master, read by its own task."""

    name: str
    conn: Connection
    task: asyncio.Task[None] | None = None
    sent: deque[_Sent] = field(default_factory=deque)
    closed: bool = False
    ping_at: float = 0.0  # when a PING went unanswered so far (0: none)
