"""The socket layer: WebSocket connections and the HTTP endpoints on the same port.

It turns frames into validated requests for the handlers and pushes their
replies and the hub's events back; it knows nothing of how sessions are stored.
HTTP routes are registered on `SocketServer.http.router` (see lobby.http for
the interface); only WebSocket upgrades reach `process_request`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from websockets.http11 import Request, Response
from websockets.protocol import State

from lobby import protocol as p
from lobby.addresses import ConnectionGate, GuardedFront, TlsFront, Tracked
from lobby.errors import ErrorCode
from lobby.handlers import Lobby
from lobby.http import FrontProtocol, HttpRequest, HttpResponse, HttpService, Router, text_response
from lobby.hub import Client
from lobby.logs import fields
from lobby.wsconn import Listener, WebSocket, text_frame

log = logging.getLogger("lobby.server")

WS_PATH = "/ws"
_BINARY_REFUSED = p.encode(p.error_reply(
    "error", None, ErrorCode.BAD_REQUEST,
    "binary frames are not supported: send JSON as a text frame"))
# Frames are charged by size before they are parsed: a request costs one token,
# and one more per this many bytes, so big frames cannot buy parse time cheaply.
FRAME_COST_BYTES = 4096
# A frame refused by the rate limit is answered with its own type and id only if
# it is small enough for that to be cheap; bigger ones get type "error".
PEEK_MAX_BYTES = 1024


class WsClient:
    """A player socket as the domain sees it (satisfies `hub.Client`)."""

    __slots__ = ("_last", "_tokens", "address", "conn_id", "max_buffered", "name",
                 "password_failures", "ping_sent", "player_id", "refused", "session_id",
                 "stats", "token_hash", "ws")

    def __init__(self, ws: WebSocket, conn_id: str, burst: int,
                 max_buffered: int = 1 << 20, stats: dict[str, int] | None = None,
                 address: str = "unknown") -> None:
        self.ws = ws
        self.address = address  # the client's address (X-Forwarded-For when trusted)
        self.refused = 0  # frames refused by the rate limit since the last one allowed
        self.max_buffered = max_buffered
        self.stats = stats if stats is not None else {}
        self.conn_id = conn_id
        self.player_id: str | None = None
        self.session_id: str | None = None
        self.name = ""
        self.token_hash = ""
        self.password_failures: list[float] = []
        self._tokens = float(burst)
        self._last = time.monotonic()
        self.ping_sent = 0.0  # loop time of the keepalive ping not yet answered; 0: none

    def push(self, text: str) -> None:
        # Written without awaiting the peer: replies and events never stall the
        # reader of this socket or the fan-out to others.
        push_many((self,), text)

    def writable(self) -> bool:
        """False, and the socket dropped, once a peer has stopped reading.

        Pushes have no backpressure, so a socket whose peer does not read would
        buffer every event of its session forever. Lobby frames are small: far
        more than a lobby's worth of unsent data means the peer is gone or stuck.
        It is aborted (a close frame could not get through) and may resume.
        """
        transport = self.ws.transport
        if transport.is_closing():
            return False
        if transport.get_write_buffer_size() <= self.max_buffered:
            return True
        log.warning("dropping %s: %d bytes unsent", self.conn_id,
                    transport.get_write_buffer_size())
        self.stats["slow_drops"] = self.stats.get("slow_drops", 0) + 1
        self.ws.abort()
        return False

    def close(self, code: int, reason: str) -> None:
        self.ws.close(code, reason)

    def allow(self, rate: float, burst: int, cost: float = 1.0) -> bool:
        """Token bucket: `rate` requests a second, bursts up to `burst`."""
        now = time.monotonic()
        self._tokens = min(float(burst), self._tokens + (now - self._last) * rate)
        self._last = now
        if self._tokens < cost:
            return False
        self._tokens -= cost
        return True


def _rate_limited(rtype: str, rid: object) -> str:
    return p.encode(
        p.error_reply(rtype, rid, ErrorCode.RATE_LIMITED, "too many requests, slow down"))


def push_many(clients: Iterable[Client], text: str) -> None:
    """`text` to every client, framed once: the same bytes go to every open socket
    without an extension (framing per receiver cost ~2 µs each, a 16-receiver
    change ~40 µs: see docs/benchmarks.md). A socket with permessage-deflate gets
    its own, compressed, frame from websockets."""
    frame = b""
    for client in clients:
        ws: WebSocket = client.ws  # type: ignore[attr-defined]
        if ws.plain:
            transport = ws.transport
            if (transport.get_write_buffer_size() > client.max_buffered  # type: ignore[attr-defined]
                    or transport.is_closing()) and not client.writable():  # type: ignore[attr-defined]
                continue
            if not frame:
                frame = text_frame(text.encode())
            transport.write(frame)
        elif ws.protocol.state is State.OPEN and client.writable():  # type: ignore[attr-defined]
            ws.send_text(text)


class Keepalive:
    """One keepalive for all of a node's sockets, instead of websockets' task per
    socket (~1.7 KiB per idle socket, and a task made on every connect).

    The sockets are spread over SLICES buckets; every interval / SLICES seconds
    one bucket is visited: a socket that has received nothing since its last ping
    (an interval ago) is closed with 1011, as websockets' keepalive would do, and
    the others are pinged. Any frame counts as a sign of life, a pong included.
    """

    SLICES = 20

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._buckets: list[dict[WsClient, None]] = [{} for _ in range(self.SLICES)]
        self._next = 0
        self.timeouts = 0

    def add(self, client: WsClient) -> None:
        self._buckets[self._next % self.SLICES][client] = None
        self._next += 1

    def remove(self, client: WsClient) -> None:
        for bucket in self._buckets:
            if bucket.pop(client, 0) is None:
                return

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        tick = self.interval / self.SLICES
        k = 0
        while True:
            await asyncio.sleep(tick)
            self.visit(self._buckets[k], loop.time())
            k = (k + 1) % self.SLICES

    def visit(self, bucket: dict[WsClient, None], now: float) -> None:
        for client in list(bucket):
            ws = client.ws
            if ws.protocol.state is not State.OPEN:
                continue
            tracked = getattr(ws, "tracked", None)
            if client.ping_sent and tracked is not None and \
                    tracked.last_received < client.ping_sent:
                self.timeouts += 1
                client.ping_sent = 0.0
                bucket.pop(client, None)
                client.close(1011, "keepalive ping timeout")
                continue
            client.ping_sent = now
            ws.protocol.send_ping(b"")
            ws.send_data()


class SocketServer:
    def __init__(self, lobby: Lobby, node_id: str, *, rate: float, burst: int,
                 max_clients: int | None = None, max_buffered: int = 1 << 20,
                 gate: ConnectionGate | None = None, tls: ssl.SSLContext | None = None,
                 tls_timeout: float = 5.0, ping_interval: float | None = None) -> None:
        self.lobby = lobby
        self.gate = gate
        # --tls-cert: the listening socket is plain TCP and each connection starts
        # TLS itself once the gate has counted it (TlsFront).
        assert tls is None or gate is not None, "TLS is started by the gate's fronts"
        self.tls = tls
        self.tls_timeout = tls_timeout
        self.max_clients = max_clients
        self.max_buffered = max_buffered
        self.stats: dict[str, int] = {"slow_drops": 0}
        self.node_id = node_id
        self.rate = rate
        self.burst = burst
        self._ids = itertools.count(1)
        self.keepalive = Keepalive(ping_interval) if ping_interval else None
        self.listener: Listener | None = None  # made by listen()
        self.http = HttpService(Router())
        # `routes["/path"] = handler` registers a handler for any method (lobby.http).
        self.routes: Router = self.http.router
        self.routes.add("GET", "/healthz", self._healthz)

    def listen(self, **settings: Any) -> Listener:
        """The WebSocket side of the node's listening socket (lobby.wsconn)."""
        self.listener = Listener(self, gate=self.gate, **settings)
        return self.listener

    def front_factory(self) -> asyncio.Protocol:
        """The protocol of every accepted socket: it starts as HTTP and becomes a
        WebSocket only if it asks for an upgrade."""
        listener = self.listener
        assert listener is not None, "listen() first"
        if self.gate is None:
            return FrontProtocol(self.http, lambda: WebSocket(listener))
        tracked = Tracked()
        front = GuardedFront(self.http, lambda: WebSocket(listener, tracked), self.gate,
                             tracked)
        if self.tls is not None:
            return TlsFront(front, self.tls, self.tls_timeout)
        return front

    async def process_request(self, connection: WebSocket, request: Request
                              ) -> Response | None:
        """Only WebSocket upgrades get here (plain HTTP is lobby.http's)."""
        path = request.path.split("?", 1)[0]
        tracked = connection.tracked
        if self.gate is not None and tracked is not None:
            refusal = self.gate.request_received(tracked)
            if refusal is not None:
                return connection.respond(HTTPStatus.TOO_MANY_REQUESTS,
                                          f"too many connections: {refusal}\n")
        if path != WS_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found; the WebSocket is at /ws\n")
        if self.max_clients is not None and self.lobby.hub.client_count >= self.max_clients:
            # Refuse cleanly while there are file descriptors left to do so;
            # the client (or its load balancer) tries another node.
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "lobby node full\n")
        if self.gate is not None:
            address = self.gate.client_address(connection, request)
            refusal = await self.gate.admit_socket(tracked, address)
            if refusal is not None:
                return connection.respond(HTTPStatus.TOO_MANY_REQUESTS, refusal + "\n")
        return None

    def _healthz(self, request: HttpRequest) -> HttpResponse:
        return text_response(HTTPStatus.OK, "ok\n")

    def opened(self, ws: WebSocket) -> WsClient:
        """A socket whose handshake is done: it becomes a client of the hub."""
        tracked = ws.tracked
        remote = (tracked.client_ip if tracked is not None else None) or (
            ws.remote_address[0] if ws.remote_address else "unknown")
        client = WsClient(ws, f"{self.node_id}.{next(self._ids)}", self.burst,
                          self.max_buffered, self.stats, address=remote)
        self.lobby.hub.add_client(client)
        if self.keepalive is not None:
            self.keepalive.add(client)
        if log.isEnabledFor(logging.INFO):
            log.info("connect %s from %s", client.conn_id, remote,
                     extra=fields(conn=client.conn_id, remote=remote))
        return client

    async def closed(self, client: WsClient, ws: WebSocket) -> None:
        if self.keepalive is not None:
            self.keepalive.remove(client)
        if log.isEnabledFor(logging.INFO):
            log.info("disconnect %s (player %s, code %s)", client.conn_id,
                     client.player_id, ws.close_code, extra=fields(
                         conn=client.conn_id, player=client.player_id,
                         session=client.session_id, code=ws.close_code,
                         reason=ws.close_reason or None))
        await self.lobby.disconnected(client)

    async def message(self, client: WsClient, frame: str | bytes) -> None:
        """One message: limits first, then parse, then the handler."""
        if isinstance(frame, bytes):
            client.push(_BINARY_REFUSED)
            return
        # Charged before parsing, bad frames too: a parse and a reply cost
        # the same whether the frame turns out valid or not.
        if not client.allow(self.rate, self.burst, 1 + len(frame) // FRAME_COST_BYTES):
            client.refused += 1
            if client.refused > self.burst:
                # It keeps sending while refused: answering it is the cost
                # now. Frames read until its close reply are dropped unread.
                if client.refused == self.burst + 1:
                    client.close(1008, "rate limit exceeded")
                return
            rtype, rid = (p.envelope_of(frame) if len(frame) <= PEEK_MAX_BYTES
                          else ("error", None))
            client.push(_rate_limited(rtype, rid))
            return
        client.refused = 0
        try:
            req = p.parse_request(frame)
        except p.BadFrame as bad:
            client.push(p.encode(bad.reply))
            return
        await self.lobby.handle(client, req)
