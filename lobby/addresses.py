"""Per-address limits of the socket layer: who the client is, and how many TCP
connections, handshakes in flight and WebSockets each address may hold.

The caps on connections and handshakes are per node: they keep one address (or
a flood of half-open connections from many) from taking the file descriptors and
the event loop that every other player of *this* node needs. WebSockets per
client address (--max-sockets-per-ip) are counted lobby-wide, in the session
store (AddressLedger), so that a load balancer spreading an address over nodes
does not multiply its cap; so are wrong passwords.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import ssl
import time
from collections import Counter
from http import HTTPStatus
from typing import Any, cast

from websockets.http11 import Request

from lobby.http import FrontProtocol, HttpResponse, HttpService, error_response

log = logging.getLogger("lobby.server")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# A connection refused for too many handshakes in flight is told so (HTTP 429)
# if its request comes within this time, and dropped after it.
REFUSE_SECONDS = 1.0


def parse_proxies(raw: str | None) -> tuple[IPNetwork, ...]:
    """`--trusted-proxy`: comma-separated CIDRs (or single addresses)."""
    if not raw:
        return ()
    return tuple(ipaddress.ip_network(part.strip(), strict=False)
                 for part in raw.split(",") if part.strip())


def _is_trusted(address: str, proxies: tuple[IPNetwork, ...]) -> bool:
    if not proxies:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_address(peer: str, forwarded_for: str | None, proxies: tuple[IPNetwork, ...]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy,
    the first untrusted hop of X-Forwarded-For counted from the right (entries
    left of it were written by the client and prove nothing)."""
    if not forwarded_for or not _is_trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a garbled header: fall back to what we know
        if not _is_trusted(hop, proxies):
            return hop
    return hops[0] if hops else peer


class RateLimitedLog:
    """At most one line per `interval` seconds; the lines held back are counted
    and reported with the next one."""

    def __init__(self, logger: logging.Logger, interval: float = 1.0) -> None:
        self.logger = logger
        self.interval = interval
        self._next = 0.0
        self.suppressed = 0

    def warning(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self.suppressed += 1
            return
        self._next = now + self.interval
        if self.suppressed:
            msg += f" (and {self.suppressed} more like this in the last {self.interval:g}s)"
            self.suppressed = 0
        self.logger.warning(msg, *args)


class ConnectionGate:
    """Counts every TCP connection from the moment it is accepted.

    A connection is *handshaking* until its HTTP request has arrived; half-open
    connections never get that far and are the cheapest way to hold a node's
    file descriptors, so they are capped in total and per peer address:
    - past the per-address cap a connection is *refused*: it gets an HTTP 429
      if its request arrives within REFUSE_SECONDS, and is dropped after that
      (or at once when the descriptors left are the handshake slots' own);
    - when all handshake slots are taken, the oldest handshake of the address
      holding the most is dropped to make room, so a flood from a few
      addresses cannot lock out a player from another: an address with fewer
      handshakes in flight than the busiest always gets a slot;
    - past the node's connection budget a connection is aborted at once.
    WebSockets are capped per client address (after X-Forwarded-For).
    """

    def __init__(self, *, max_connections: int, max_handshakes: int,
                 max_handshakes_per_ip: int, max_sockets_per_ip: int,
                 trusted_proxies: tuple[IPNetwork, ...] = (),
                 ledger: AddressLedger | None = None) -> None:
        self.ledger = ledger
        self.max_connections = max_connections
        self.max_handshakes = max_handshakes
        self.max_handshakes_per_ip = max_handshakes_per_ip
        self.max_sockets_per_ip = max_sockets_per_ip
        self.trusted_proxies = trusted_proxies
        self.connections = 0
        self.handshakes = 0
        self.refusing = 0
        # peer -> its handshaking connections, oldest first
        self._handshaking: dict[str, dict[Tracked, None]] = {}
        self._sockets: Counter[str] = Counter()
        self.stats = {"dropped_connections": 0, "refused_handshakes": 0,
                      "evicted_handshakes": 0, "refused_per_ip": 0,
                      "refused_per_ip_lobby": 0}
        self._refusals = RateLimitedLog(log)
        self.refuse_seconds = REFUSE_SECONDS

    # called by Tracked -----------------------------------------------
    def accepted(self, conn: Tracked) -> bool:
        """Count a new TCP connection; False: abort it now."""
        peer = conn.peer
        self.connections += 1
        conn.gate_state = "handshaking"
        if self.connections > self.max_connections:
            return self._drop_new(conn, f"{self.connections - 1} connections open "
                                  "(the node's descriptor budget)")
        mine = self._handshaking.get(peer)
        count = len(mine) if mine else 0
        if count >= self.max_handshakes_per_ip and not _is_trusted(peer, self.trusted_proxies):
            return self._refuse(conn, f"{count} handshakes in flight from {peer} "
                                "(--max-handshakes-per-ip)")
        if self.handshakes >= self.max_handshakes and not self._evict_for(count):
            return self._refuse(conn, f"{self.handshakes} handshakes in flight "
                                "(--max-handshakes)")
        if mine is None:
            mine = self._handshaking[peer] = {}
        mine[conn] = None
        self.handshakes += 1
        return True

    def _drop_new(self, conn: Tracked, why: str) -> bool:
        conn.gate_state = "dropped"
        self.stats["dropped_connections"] += 1
        self._refusals.warning("dropping new connections: %s", why)
        return False

    def _refuse(self, conn: Tracked, why: str) -> bool:
        # Telling costs a descriptor for up to REFUSE_SECONDS: only while that
        # leaves the handshake slots their room in the budget.
        if self.connections > self.max_connections - self.max_handshakes:
            return self._drop_new(conn, why)
        conn.gate_state = "refusing"
        conn.refusal = why
        self.refusing += 1
        self.stats["refused_handshakes"] += 1
        self._refusals.warning("refusing new connections: %s", why)
        return True

    def _evict_for(self, count: int) -> bool:
        """Make room for a handshake from an address with `count` in flight by
        dropping the oldest one of the busiest address, if that one has more."""
        busiest = max(self._handshaking.items(), key=lambda kv: len(kv[1]), default=None)
        if busiest is None or len(busiest[1]) <= count:
            return False
        victim = next(iter(busiest[1]))
        self._end_handshake(victim)
        victim.gate_state = "dropped"
        self.stats["evicted_handshakes"] += 1
        if victim.transport is not None:
            victim.transport.abort()
        return True

    def request_received(self, conn: Tracked) -> str | None:
        """The request of a counted connection arrived: the reason to refuse it, if any."""
        if conn.gate_state == "handshaking":
            conn.gate_state = "open"
            self._end_handshake(conn)
        elif conn.gate_state == "refusing":
            return conn.refusal
        return None

    def closed(self, conn: Tracked) -> None:
        state = conn.gate_state
        if state is None:
            return
        conn.gate_state = None
        self.connections -= 1
        if state == "handshaking":
            self._end_handshake(conn)
        elif state == "refusing":
            self.refusing -= 1
        if conn.client_ip is not None:
            self._sockets[conn.client_ip] -= 1
            if self._sockets[conn.client_ip] <= 0:
                del self._sockets[conn.client_ip]
            if self.ledger is not None:
                self.ledger.release(conn.client_ip)

    def _end_handshake(self, conn: Tracked) -> None:
        mine = self._handshaking.get(conn.peer)
        if mine is None or conn not in mine:
            return
        del mine[conn]
        if not mine:
            del self._handshaking[conn.peer]
        self.handshakes -= 1

    # called by the socket server ---------------------------------------------
    def client_address(self, conn: Any, request: Request) -> str:
        """`conn`: a lobby.wsconn.WebSocket."""
        tracked = conn.tracked
        peer = tracked.peer if tracked is not None else _peer_of(conn.transport)
        return client_address(peer, request.headers.get("X-Forwarded-For"),
                              self.trusted_proxies)

    async def admit_socket(self, tracked: Tracked | None, address: str) -> str | None:
        """Count a WebSocket against its address: None, or why it is refused.
        This node's own count is checked first (no store call past the cap);
        then the lobby's, in the store, one round trip."""
        if self._sockets[address] >= self.max_sockets_per_ip:
            self.stats["refused_per_ip"] += 1
            self._refusals.warning("refusing WebSockets from %s: %d open (--max-sockets-per-ip)",
                                   address, self._sockets[address])
            return "too many connections from your address (--max-sockets-per-ip)"
        if tracked is None:
            return None
        if self.ledger is not None:
            if not await self.ledger.acquire(address):
                self.stats["refused_per_ip"] += 1
                self.stats["refused_per_ip_lobby"] += 1
                self._refusals.warning(
                    "refusing WebSockets from %s: %d open across the lobby's nodes "
                    "(--max-sockets-per-ip)", address, self.max_sockets_per_ip)
                return ("too many connections from your address across the lobby "
                        "(--max-sockets-per-ip)")
            if tracked.gate_state is None:  # it closed while the store answered
                self.ledger.release(address)
                return "closed"
        self._sockets[address] += 1
        tracked.client_ip = address
        return None

    def sockets_of(self, address: str) -> int:
        return self._sockets.get(address, 0)


def _peer_of(transport: asyncio.BaseTransport | None) -> str:
    peername = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peername, tuple) and peername:
        return str(peername[0])
    return "unknown"


class Tracked:
    """What the gate knows of one TCP connection, from accept to close, whichever
    protocol (HTTP front, then maybe WebSocket) serves it meanwhile."""

    __slots__ = ("__weakref__", "client_ip", "gate_state", "last_received", "peer", "refusal",
                 "transport")

    def __init__(self) -> None:
        self.last_received = 0.0  # loop time of the last bytes read (the keepalive's)
        self.peer = "unknown"
        self.gate_state: str | None = None
        self.refusal = ""
        self.client_ip: str | None = None
        self.transport: asyncio.BaseTransport | None = None


class GuardedFront(FrontProtocol):
    """lobby.http's front protocol, reporting to the gate from the TCP accept on,
    so that even a peer that never sends a byte is counted."""

    def __init__(self, service: HttpService, make_ws: Any, gate: ConnectionGate,
                 tracked: Tracked) -> None:
        super().__init__(service, make_ws)
        self.gate = gate
        self.tracked = tracked

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        """Count the TCP connection at its accept; False: abort it now."""
        tracked = self.tracked
        tracked.transport = transport
        tracked.peer = _peer_of(transport)
        if not self.gate.accepted(tracked):
            return False
        if tracked.gate_state == "refusing":
            asyncio.get_running_loop().call_later(
                self.gate.refuse_seconds, transport.abort)  # type: ignore[attr-defined]
        return True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # Over TLS, TlsFront counted the connection at its accept already.
        if self.tracked.transport is None and not self.admit(transport):
            transport.abort()  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._handed_off:
            self.gate.closed(self.tracked)
        super().connection_lost(exc)

    async def _answer(self, event: Any, headers: dict[str, str]) -> HttpResponse:
        refusal = self.gate.request_received(self.tracked)
        if refusal is not None:
            response = error_response(HTTPStatus.TOO_MANY_REQUESTS, "RATE_LIMITED",
                                      f"too many connections: {refusal}")
            response.headers.append(("Connection", "close"))
            return response
        return await super()._answer(event, headers)


class TlsFront(asyncio.Protocol):
    """With --tls-cert, a connection's protocol until its TLS handshake is done.

    The gate counts the connection at its TCP accept, so a peer that connects and
    never finishes TLS holds a handshake slot, capped per address, like one that
    never sends its HTTP request (with TLS in the listening socket the gate would
    see it only after the handshake). Then the handshake runs (loop.start_tls,
    within the handshake timeout) and the connection goes on as its GuardedFront.
    """

    def __init__(self, front: GuardedFront, context: ssl.SSLContext, timeout: float) -> None:
        self.front = front
        self.context = context
        self.timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses)
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.pause_reading()  # the first bytes are the TLS handshake's
        if not self.front.admit(transport):
            transport.abort()
            return
        self.front.service.connections.add(self)  # type: ignore[arg-type]
        self._task = asyncio.get_running_loop().create_task(self._handshake(transport))

    async def _handshake(self, transport: asyncio.Transport) -> None:
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport, self.front, self.context, server_side=True,
                ssl_handshake_timeout=self.timeout)
        except Exception:  # a failed or timed-out handshake, or a peer gone
            transport.abort()
            self.front.gate.closed(self.front.tracked)
            return
        finally:
            self.front.service.connections.discard(self)  # type: ignore[arg-type]
        if tls is None or tls.is_closing():
            self.front.gate.closed(self.front.tracked)
            return
        self.front.connection_made(tls)

    def connection_lost(self, exc: Exception | None) -> None:
        # Only before start_tls took the transport over (after, the front hears it).
        self.front.service.connections.discard(self)  # type: ignore[arg-type]
        if self._task is not None:
            self._task.cancel()
        self.front.gate.closed(self.front.tracked)

    def shutdown(self) -> None:
        """Server shutdown (HttpService.close_all): a handshake in flight is dropped."""
        if self._transport is not None:
            self._transport.abort()


def install_accept_error_limiter(loop: asyncio.AbstractEventLoop) -> Any:
    """Out of file descriptors, asyncio reports every failed accept() with a
    traceback (thousands a second: its accept loop goes on after the error);
    keep one line a second. Returns the previous handler, for uninstalling."""
    previous = loop.get_exception_handler()
    limited = RateLimitedLog(logging.getLogger("lobby.server"))

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if message.startswith("socket.accept() out of system resource"):
            exc = context.get("exception")
            limited.warning("accept() failed: %s (open-file limit reached; new connections "
                            "wait in the listen backlog)", exc)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return previous


# Queued releases wait this long for an acquire to ride with (seconds).
RELEASE_DELAY = 0.05


class AddressLedger:
    """This node's share of the lobby-wide count of WebSockets per client address,
    kept in the session store so that --max-sockets-per-ip holds across nodes.

    One writer task makes every store call, in order: an address's release, the
    forgetting of it and its next acquire reach the store as they happened. An
    acquire waits for its batch (one round trip at connect); releases ride with the
    next acquire's batch, or go on their own after RELEASE_DELAY (a sent release
    batch would hold up the next acquire for its round trip).

    Counts are kept under this node's *incarnation* (node id and a random suffix),
    whose heartbeat the writer renews every `beat_seconds`. A node that dies stops
    beating; once its heartbeat lapses (`lapse_ms`, --node-timeout-seconds) any
    node's address sweep drops its counts, so a SIGKILLed node cannot lock an
    address out. A node that finds its own heartbeat lapsed (paused, or cut off
    from the store), or whose batch failed, writes its counts again under a new
    incarnation and drops the old one.
    """

    def __init__(self, store: Any, node_id: str, limit: int, *, lapse_ms: int,
                 beat_seconds: float) -> None:
        self.store = store
        self.node_id = node_id
        self.limit = limit
        self.lapse_ms = lapse_ms
        self.beat_seconds = beat_seconds
        self.incarnation = self._new_incarnation()
        self.held: Counter[str] = Counter()  # address -> sockets counted in the store
        self.stats = {"store_failures": 0, "incarnations": 1, "swept": 0}
        self._queue: list[tuple[str, Any]] = []
        self._forget: set[str] = set()  # refused addresses this node holds none of
        # What _run waits on while nothing is due (a future and a timer: an Event
        # and a timeout context were ~2% of a cold join).
        self._waker: asyncio.Future[None] | None = None
        self._acquires = 0  # acquires in the queue
        self._release_due = 0.0  # loop time by which queued releases go out
        self._lost = False  # a batch failed: what the store has of us is in doubt
        self._next_beat = 0.0
        self._task: asyncio.Task[None] | None = None
        self._sweep: asyncio.Task[None] | None = None
        self._failures = RateLimitedLog(log, 10.0)

    def _new_incarnation(self) -> str:
        return f"{self.node_id}#{secrets.token_hex(4)}"

    async def start(self) -> None:
        await self.store.address_beat(self.incarnation, _now_ms(), self.lapse_ms, first=True)
        self._next_beat = asyncio.get_running_loop().time() + self.beat_seconds
        self._task = asyncio.create_task(self._run(), name="lobby-address-ledger")

    async def close(self) -> None:
        """Stop writing, and take this node's counts out of the store (its
        sockets are closed, or about to be)."""
        for task in (self._task, self._sweep):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        for _, fut in self._queue:
            if fut is not None and not fut.done():
                fut.set_result(True)
        self._queue.clear()
        await self.store.address_drop(self.incarnation)

    async def acquire(self, address: str) -> bool:
        """Count one more WebSocket from `address`; False: the lobby holds the cap."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((address, fut))
        self._acquires += 1
        self._wake()
        return await fut

    def release(self, address: str) -> None:
        """One counted WebSocket from `address` closed (sent with the next batch)."""
        if not self._queue:
            self._release_due = asyncio.get_running_loop().time() + RELEASE_DELAY
            self._wake()
        self._queue.append((address, None))

    def _wake(self) -> None:
        if self._waker is not None:
            _set_done(self._waker)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            due = self._next_beat
            if self._queue:
                due = now if self._acquires else min(due, self._release_due)
            if due > now:
                waker = self._waker = loop.create_future()
                timer = loop.call_at(due, _set_done, waker)
                try:
                    await waker
                finally:
                    timer.cancel()
                    self._waker = None
                continue
            if now >= self._next_beat:
                # Before any batch: a node that was paused past its heartbeat
                # learns it here and writes under a new incarnation.
                await self._beat()
                self._next_beat = loop.time() + self.beat_seconds
            if self._queue:
                await self._flush()

    async def _beat(self) -> None:
        try:
            alive = await self.store.address_beat(self.incarnation, _now_ms(), self.lapse_ms)
            if not alive or self._lost:
                await self._reincarnate()
        except Exception as err:
            self._failed(err)
            return
        if self._sweep is None or self._sweep.done():
            self._sweep = asyncio.create_task(self._sweep_dead(), name="lobby-address-sweep")

    async def _reincarnate(self) -> None:
        old, self.incarnation = self.incarnation, self._new_incarnation()
        self.stats["incarnations"] += 1
        await self.store.address_beat(self.incarnation, _now_ms(), self.lapse_ms, first=True)
        await self.store.address_restore(self.incarnation, dict(self.held))
        self._lost = False
        log.warning("address counts written again under %s (%d addresses): %s was taken "
                    "for dead or a write failed", self.incarnation, len(self.held), old)
        await self.store.address_drop(old)

    async def _sweep_dead(self) -> None:
        try:
            while True:
                dropped = await self.store.address_sweep(_now_ms())
                self.stats["swept"] += dropped
                if not dropped:
                    return
        except Exception as err:
            self._failed(err)

    async def _flush(self) -> None:
        batch, self._queue = self._queue, []
        self._acquires = 0
        ops: list[tuple[str, str]] = [("forget", a) for a in self._forget if not self.held[a]]
        self._forget.clear()
        waiting: list[tuple[str, asyncio.Future[bool]]] = []
        for address, fut in batch:
            if fut is None:
                if self.held[address] <= 0:
                    continue
                self.held[address] -= 1
                ops.append(("release", address))
                if not self.held[address]:
                    del self.held[address]
                    ops.append(("forget", address))
            else:
                ops.append(("acquire", address))
                waiting.append((address, fut))
        results: list[bool] | None
        try:
            results = await self.store.address_apply(self.incarnation, ops, self.limit)
        except Exception as err:
            # Admitted (each node's own cap still holds) and counted here; the
            # next beat writes the counts again under a new incarnation.
            self._failed(err)
            results = None
        admitted = iter([ok for (kind, _), ok in zip(ops, results, strict=True)
                         if kind == "acquire"] if results is not None else [])
        for address, fut in waiting:
            ok = next(admitted, True)
            if ok:
                self.held[address] += 1
            elif not self.held[address]:
                self._forget.add(address)
            if fut.done():  # the connection went away while it waited
                if ok:
                    self.release(address)
            else:
                fut.set_result(ok)

    def _failed(self, err: Exception) -> None:
        self._lost = True
        self.stats["store_failures"] += 1
        self._failures.warning("address counts: store call failed (%s: %s); sockets are "
                               "capped per node until it answers", type(err).__name__, err)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _now_ms() -> int:
    return int(time.time() * 1000)
