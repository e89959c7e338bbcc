"""Per-address limits of the socket layer: who the client is, and how many TCP
connections, handshakes in flight and WebSockets each address may hold.

Every limit here is per node. They keep one address (or a flood of half-open
connections from many) from taking the file descriptors and the event loop that
every other player needs; the limits that must hold across nodes (wrong
passwords) live in the session store.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection
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
                 trusted_proxies: tuple[IPNetwork, ...] = ()) -> None:
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
                      "evicted_handshakes": 0, "refused_per_ip": 0}
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

    def _end_handshake(self, conn: Tracked) -> None:
        mine = self._handshaking.get(conn.peer)
        if mine is None or conn not in mine:
            return
        del mine[conn]
        if not mine:
            del self._handshaking[conn.peer]
        self.handshakes -= 1

    # called by the socket server ---------------------------------------------
    def client_address(self, conn: ServerConnection, request: Request) -> str:
        tracked = getattr(conn, "tracked", None)
        peer = tracked.peer if tracked is not None else _peer_of(conn.transport)
        return client_address(peer, request.headers.get("X-Forwarded-For"),
                              self.trusted_proxies)

    def admit_socket(self, tracked: Tracked | None, address: str) -> bool:
        """Count a WebSocket against its address; False past the cap."""
        if self._sockets[address] >= self.max_sockets_per_ip:
            self.stats["refused_per_ip"] += 1
            self._refusals.warning("refusing WebSockets from %s: %d open (--max-sockets-per-ip)",
                                   address, self._sockets[address])
            return False
        if tracked is not None:
            self._sockets[address] += 1
            tracked.client_ip = address
        return True

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

    __slots__ = ("__weakref__", "client_ip", "gate_state", "peer", "refusal", "transport")

    def __init__(self) -> None:
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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        tracked = self.tracked
        tracked.transport = transport
        tracked.peer = _peer_of(transport)
        if not self.gate.accepted(tracked):
            transport.abort()  # type: ignore[attr-defined]
        elif tracked.gate_state == "refusing":
            asyncio.get_running_loop().call_later(
                self.gate.refuse_seconds, transport.abort)  # type: ignore[attr-defined]

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


class GuardedConnection(ServerConnection):
    """The WebSocket a GuardedFront hands its socket to; it reports the close."""

    def __init__(self, *args: Any, gate: ConnectionGate, tracked: Tracked,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate
        self.tracked = tracked

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.closed(self.tracked)
        super().connection_lost(exc)


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
