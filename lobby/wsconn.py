"""A WebSocket connection driven by the event loop's own callbacks.

websockets' Sans-I/O `ServerProtocol` does the protocol: the opening handshake's
checks, frame parsing and building, permessage-deflate, pings answered and the
closing handshake. This module is only its I/O: bytes from `data_received` go
into it, what it has to send goes to the transport, and each complete message
goes to the owner (lobby.server), one at a time, in order.

It replaces websockets' asyncio connection, which keeps a task per connection
for its whole life, and per message an assembler's futures, a lock and a wake-up
of that task: about a fifth of a cold join's CPU (docs/benchmarks.md). Here an
idle socket has no task at all; a message starts one only if none is running.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import http
import logging
import re
import time
from collections.abc import Sequence
from typing import Any, Protocol

from websockets.datastructures import Headers
from websockets.extensions.base import ServerExtensionFactory
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import CloseCode, Frame, Opcode, apply_mask
from websockets.http11 import Request, Response
from websockets.protocol import Protocol as _WsProtocol
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader as _WsReader

log = logging.getLogger("lobby.server")
_ws_log = logging.getLogger("websockets.server")

OPEN = State.OPEN
CONNECTING = State.CONNECTING
TEXT = Opcode.TEXT
BINARY = Opcode.BINARY
CONT = Opcode.CONT

# Messages read ahead of the one being handled: past HIGH, reading pauses until
# only LOW are left (a peer that floods gets TCP backpressure, not our memory).
QUEUE_HIGH = 16
QUEUE_LOW = 4
# A message may come in many frames; max_size bounds their bytes, this their count.
MAX_FRAGMENTS = 256
# Bytes a client may send behind its upgrade request before the 101 is out.
MAX_EARLY_BYTES = 1 << 16
# Where websockets' frame parser waits when it is between two frames.
_BETWEEN_FRAMES = (_WsProtocol.parse.__code__, _WsReader.at_eof.__code__)
# First header byte of a final, uncompressed text frame (FIN, no RSV bits, TEXT).
_FIN_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    """A server's (unmasked, final) text frame of `payload` (RFC 6455 5.2): the
    bytes websockets' `Frame(TEXT, payload).serialize(mask=False)` makes, in a
    fraction of its time (it builds and checks a Frame and packs through a buffer)."""
    n = len(payload)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + payload
    if n < 1 << 16:
        return bytes((_FIN_TEXT, 126)) + n.to_bytes(2, "big") + payload
    return bytes((_FIN_TEXT, 127)) + n.to_bytes(8, "big") + payload


def _between_frames(protocol: ServerProtocol) -> bool:
    """websockets' parser has read whole frames so far and waits for the next
    one (not inside a frame, not discarding after a close, not mid-message)."""
    if protocol.current_size is not None or protocol.reader.buffer:
        return False
    outer = None
    inner = protocol.parser.gi_yieldfrom
    while inner is not None and inner.gi_yieldfrom is not None:
        outer, inner = inner, inner.gi_yieldfrom
    return (outer is not None and inner is not None
            and (outer.gi_code, inner.gi_code) == _BETWEEN_FRAMES)


# websockets' HTTP/1.1 rules (websockets.http11: MAX_NUM_HEADERS, MAX_LINE_LENGTH,
# _token_re, _value_re), for the fast read of an upgrade request below.
_MAX_HEADERS = 128
_MAX_LINE = 8192
_TOKEN = re.compile(rb"[-!#$%&\'*+.^_`|~0-9a-zA-Z]+")
_VALUE = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")
_PATH = re.compile(rb"/[\x21-\x7e]*")


def read_upgrade(head: bytes) -> Request | None:
    """A common upgrade request (its head, without the blank line) read in one go,
    or None for anything else: that request goes through websockets' own parser,
    which accepts or refuses it as it always has. What this accepts, websockets'
    parser reads the same; the WebSocket checks (key, version, Upgrade,
    Connection, extensions) are websockets' in either case (LobbyProtocol.accept)."""
    lines = head.split(b"\r\n")
    if len(lines) > _MAX_HEADERS + 1:
        return None
    method, _, rest = lines[0].partition(b" ")
    target, _, version = rest.partition(b" ")
    if method != b"GET" or version != b"HTTP/1.1" or not _PATH.fullmatch(target):
        return None
    headers = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        value = value.strip(b" \t")
        if not sep or len(line) > _MAX_LINE or not _TOKEN.fullmatch(name) \
                or not _VALUE.fullmatch(value):
            return None
        headers.set_insecure(name.decode(), value.decode("iso-8859-1"))
    if "Transfer-Encoding" in headers or "Content-Length" in headers:
        return None
    return Request(target.decode(), headers)


class Owner(Protocol):
    """What serves the sockets (lobby.server.SocketServer)."""

    async def process_request(self, sock: WebSocket, request: Request) -> Response | None: ...

    def opened(self, sock: WebSocket) -> Any: ...

    async def message(self, client: Any, data: str | bytes) -> None: ...

    async def closed(self, client: Any, sock: WebSocket) -> None: ...


class _Date:
    """The Date header, formatted once a second (formatdate was 2% of a cold join)."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.text = email.utils.formatdate(second, usegmt=True)
        return self.text


_date = _Date()


class LobbyProtocol(ServerProtocol):
    """websockets' server protocol, with an `accept` that builds the 101 itself.
    The request is checked by websockets' own `process_request`; a request it
    refuses goes through websockets' `accept`, for its exact refusal."""

    def accept(self, request: Request) -> Response:
        try:
            accept_header, extensions_header, protocol_header = self.process_request(request)
        except Exception:
            return super().accept(request)
        self.accept_called = True
        headers = Headers()
        headers["Date"] = _date.now()
        headers["Upgrade"] = "websocket"
        headers["Connection"] = "Upgrade"
        headers["Sec-WebSocket-Accept"] = accept_header
        if extensions_header is not None:
            headers["Sec-WebSocket-Extensions"] = extensions_header
        if protocol_header is not None:
            headers["Sec-WebSocket-Protocol"] = protocol_header
        return Response(101, "Switching Protocols", headers)


class Listener:
    """The listening side: settings shared by all sockets, the set of them, and
    the shutdown (open sockets closed with 1001, handshakes refused with 503)."""

    def __init__(self, owner: Owner, *, max_size: int | None, compression: bool,
                 server_header: str | None, open_timeout: float | None,
                 close_timeout: float = 10.0, gate: Any = None) -> None:
        self.owner = owner
        self.gate = gate  # lobby.addresses.ConnectionGate: told of every close
        self.max_size = max_size
        self.extensions: Sequence[ServerExtensionFactory] | None = (
            [ServerPerMessageDeflateFactory()] if compression else None)
        self.server_header = server_header
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.server: asyncio.Server | None = None
        self.serving = True
        self.sockets: set[WebSocket] = set()  # from hand-off until their owner is done
        self.read_pauses = 0  # times a socket's reading paused (a flood, or early bytes)
        self.frames_read_here = 0  # text frames read by WebSocket._text_frames
        self._empty: asyncio.Event | None = None
        self.loop = asyncio.get_running_loop()

    def new_protocol(self, state: State = CONNECTING) -> ServerProtocol:
        return LobbyProtocol(extensions=self.extensions, max_size=self.max_size,
                             logger=_ws_log, state=state)

    def close(self) -> None:
        """Stop listening and close every open socket with 1001 (going away)."""
        self.serving = False
        if self.server is not None:
            self.server.close()
        for sock in list(self.sockets):
            if sock.client is not None and sock.protocol.state is OPEN:
                sock.close(CloseCode.GOING_AWAY, "")

    def abort(self) -> None:
        """Drop the TCP connection now (no close frame)."""
        self.plain = False
        self.transport.abort()

    async def wait_closed(self) -> None:
        """Until every socket is closed and its owner has seen it go."""
        if self.server is not None:
            await self.server.wait_closed()
        if self.sockets:
            self._empty = asyncio.Event()
            await self._empty.wait()

    def _done(self, sock: WebSocket) -> None:
        self.sockets.discard(sock)
        if not self.sockets and self._empty is not None:
            self._empty.set()


class WebSocket(asyncio.Protocol):
    """One WebSocket, from the hand-off of its upgrade request to its close."""

    __slots__ = ("_closing", "_early", "_fragments", "_inbox", "_lost", "_paused", "_task",
                 "_waiter", "client", "listener", "plain", "protocol", "request", "tracked",
                 "transport")

    def __init__(self, listener: Listener, tracked: Any = None) -> None:
        self.listener = listener
        self.tracked = tracked  # lobby.addresses.Tracked: the gate's view of this connection
        # Made when the request arrives (right after the hand-off): open at once
        # when read_upgrade read the request, else websockets' parser reads it.
        self.protocol: ServerProtocol = None  # type: ignore[assignment]
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        # After a request read by read_upgrade, what the client sends before the
        # 101 is out: fed to the protocol once it is (the protocol is open already
        # and would answer a ping before the handshake).
        self._early: bytearray | None = None
        self.request: Request | None = None
        self.client: Any = None  # the owner's, once the handshake is done
        self._inbox: collections.deque[str | bytes] = collections.deque()
        self._fragments: list[Frame] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._lost = False
        self._paused = False
        # Open, without extensions: a frame built once for many sockets can be
        # written to this one as it is (lobby.server.push_many). Kept up to date
        # wherever the protocol's state can change, all of them in this class.
        self.plain = False

    # what the owner uses ---------------------------------------------------------

    @property
    def remote_address(self) -> Any:
        return self.transport.get_extra_info("peername") if self.transport else None

    @property
    def close_code(self) -> int | None:
        return self.protocol.close_code

    @property
    def close_reason(self) -> str | None:
        return self.protocol.close_reason

    def respond(self, status: http.HTTPStatus, text: str) -> Response:
        """A refusal for process_request to return."""
        return self.protocol.reject(status, text)

    def send_text(self, text: str) -> None:
        """Through the protocol (compressed if negotiated); nothing once not open."""
        if self.protocol.state is OPEN:
            self.protocol.send_text(text.encode())
            self.send_data()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the TCP connection is aborted if the peer
        has not closed it within the close timeout."""
        if self._lost:
            return
        self.plain = False
        if self.client is None:  # still in its handshake
            self.transport.abort()
        elif self.protocol.state is OPEN:
            self.protocol.send_close(code, reason)
            self.send_data()
            self._expect_close()

    def abort(self) -> None:
        """Drop the TCP connection now (no close frame)."""
        self.plain = False
        self.transport.abort()

    async def wait_closed(self) -> None:
        if self._lost:
            return
        if self._waiter is None:
            self._waiter = self.listener.loop.create_future()
        await asyncio.shield(self._waiter)

    def send_data(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():  # the close handshake is done
                try:
                    self.transport.write_eof()
                except Exception:  # uvloop raises RuntimeError there
                    self.transport.close()
            else:  # TLS: no half-close
                self.transport.close()

    # asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.listener.sockets.add(self)

    def data_received(self, data: bytes) -> None:
        if self.tracked is not None:
            self.tracked.last_received = self.listener.loop.time()
        if self._early is not None:
            self._early += data
            if len(self._early) > MAX_EARLY_BYTES and not self._paused:
                self._paused = True
                self.listener.read_pauses += 1
                self.transport.pause_reading()
            return
        protocol = self.protocol
        if protocol is None:
            protocol = self._start(data)
            if protocol is None:
                return
        if self.plain and _between_frames(protocol):
            # Whole text frames, what clients send nearly always, are read here;
            # anything else from the first other frame on goes to websockets.
            used = self._text_frames(data, self.listener.max_size)
            if used == len(data):
                return
            data = data[used:]
        protocol.receive_data(data)
        events = protocol.events_received()
        if self.plain and protocol.state is not OPEN:  # a close frame, or a failure
            self.plain = False
        self.send_data()
        if protocol.close_expected():
            self._expect_close()
        for event in events:
            if type(event) is Frame:
                self._frame(event)
            elif self.request is None and isinstance(event, Request):
                self.request = event
                self._task = self.listener.loop.create_task(self._handshake(event))

    def eof_received(self) -> bool | None:
        self.plain = False
        if self.protocol is None or self._early is not None:
            return None  # nothing to answer before the handshake
        self.protocol.receive_eof()
        self.send_data()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.plain = False
        if self.protocol is not None:
            self.protocol.receive_eof()  # idempotent: the state is CLOSED now
        if self._closing is not None:
            self._closing.cancel()
            self._closing = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self.tracked is not None:
            self.listener.gate.closed(self.tracked)
        if self._task is None:
            self._end()

    # inside ----------------------------------------------------------------------

    def _start(self, data: bytes) -> ServerProtocol | None:
        """The first bytes (the whole request head: lobby.http hands it off so):
        a common upgrade request is read here and the handshake starts; None then.
        Anything else: websockets' protocol, to read the request itself."""
        listener = self.listener
        end = data.find(b"\r\n\r\n")
        request = read_upgrade(data[:end]) if end > 0 else None
        if request is None:
            self.protocol = listener.new_protocol()
            return self.protocol
        self.protocol = listener.new_protocol(OPEN)
        self.request = request
        self._early = bytearray(data[end + 4:])
        self._task = listener.loop.create_task(self._handshake(request))
        return None

    def _expect_close(self) -> None:
        if self._closing is None and not self._lost:
            self._closing = self.listener.loop.call_later(
                self.listener.close_timeout, self.abort)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is TEXT or opcode is BINARY:
            if not frame.fin:
                self._fragments = [frame]
                return
            data = frame.data
        elif opcode is CONT:
            fragments = self._fragments
            if fragments is None:  # the protocol has failed the connection already
                return
            fragments.append(frame)
            if not frame.fin:
                if len(fragments) > MAX_FRAGMENTS:
                    self._fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
                return
            self._fragments = None
            opcode = fragments[0].opcode
            data = b"".join(f.data for f in fragments)
        else:
            return  # ping, pong and close: the protocol has done what they need
        if opcode is TEXT:
            try:
                message: str | bytes = bytes(data).decode()
            except UnicodeDecodeError as err:
                self._fail(CloseCode.INVALID_DATA, f"{err.reason} at position {err.start}")
                return
        else:
            message = bytes(data)
        self._message(message)

    def _text_frames(self, data: bytes, limit: int | None) -> int:
        """Reads the complete, final, masked text frames (within `limit`) at the
        start of `data`, as websockets' parser would: how many bytes they took.
        The parser must be between frames; it still is after them."""
        pos = 0
        end = len(data)
        while end - pos >= 6 and data[pos] == _FIN_TEXT:
            length = data[pos + 1] ^ 0x80  # the mask bit must be set: < 128 if it is
            head = pos + 2
            if length == 126:
                if end - head < 2:
                    break
                length = int.from_bytes(data[head:head + 2], "big")
                head += 2
            elif length > 126:  # unmasked, or a 64-bit length: websockets' to judge
                break
            if limit is not None and length > limit:
                break
            stop = head + 4 + length
            if stop > end:
                break
            try:
                message = apply_mask(data[head + 4:stop], data[head:head + 4]).decode()
            except UnicodeDecodeError as err:
                self._fail(CloseCode.INVALID_DATA, f"{err.reason} at position {err.start}")
                return end
            self.listener.frames_read_here += 1
            self._message(message)
            pos = stop
        return pos

    def _message(self, message: str | bytes) -> None:
        inbox = self._inbox
        inbox.append(message)
        if self._task is None and self.client is not None:
            self._task = self.listener.loop.create_task(self._drain())
        elif len(inbox) >= QUEUE_HIGH and not self._paused:
            self._paused = True
            self.listener.read_pauses += 1
            self.transport.pause_reading()

    def _fail(self, code: int, reason: str) -> None:
        self.plain = False
        self._inbox.clear()
        self._fragments = None
        self.protocol.fail(code, reason)
        self.send_data()
        self._expect_close()

    async def _handshake(self, request: Request) -> None:
        listener = self.listener
        protocol = self.protocol
        read_here = self._early is not None  # by read_upgrade: the protocol is open
        response: Response | None
        # The open timeout: the time process_request may take (the HTTP front
        # bounded the wait for the request itself).
        timer = None
        if listener.open_timeout is not None:
            timer = listener.loop.call_later(listener.open_timeout, self.abort)
        try:
            response = await listener.owner.process_request(self, request)
        except Exception as exc:
            protocol.handshake_exc = exc
            log.error("process_request failed", exc_info=True)
            response = protocol.reject(http.HTTPStatus.INTERNAL_SERVER_ERROR,
                                       "Failed to open a WebSocket connection.\n")
        finally:
            if timer is not None:
                timer.cancel()
        if response is None:
            response = protocol.accept(request)
        if listener.server_header is not None:
            response.headers["Server"] = listener.server_header
        if response.status_code == 101 and not listener.serving:
            response = protocol.reject(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                       "Server is shutting down.\n")
        if self._lost:
            self._task = None
            self._end()
            return
        early = self._early
        self._early = None
        if response.status_code != 101:
            protocol.send_response(response)  # a refusal: the response, then EOF
            self.send_data()
            self._task = None
            self._expect_close()  # the peer reads the refusal, then closes
            return
        if read_here:
            self.transport.write(response.serialize())
        else:
            protocol.send_response(response)
            self.send_data()
        self.plain = not protocol.extensions
        self.request = None  # not read again: ~1 KiB a socket
        try:
            self.client = listener.owner.opened(self)
        except Exception:
            log.exception("opening a socket failed")
            self._task = None
            self.abort()
            return
        if early:
            if self._paused:
                self._paused = False
                self.transport.resume_reading()
            self.data_received(bytes(early))
        if self._inbox and not self._lost:
            await self._drain()
        else:
            self._task = None
            if self._lost:
                self._end()

    async def _drain(self) -> None:
        """Every message read so far, in order; then, if the connection is gone,
        the owner is told."""
        inbox = self._inbox
        owner = self.listener.owner
        try:
            while inbox:
                message = inbox.popleft()
                if self._paused and len(inbox) <= QUEUE_LOW and not self._lost:
                    self._paused = False
                    self.transport.resume_reading()
                try:
                    await owner.message(self.client, message)
                except Exception:
                    log.exception("handling a message failed")
        finally:
            self._task = None
            if self._lost:
                self._end()

    def _end(self) -> None:
        """The connection is gone and no message is being handled: tell the owner
        (once, in a task: its cleanup calls the store)."""
        if self.client is None:
            self.listener._done(self)
            return
        client, self.client = self.client, None
        self._inbox.clear()
        self.listener.loop.create_task(self._closed(client))

    async def _closed(self, client: Any) -> None:
        try:
            await self.listener.owner.closed(client, self)
        except Exception:
            log.exception("cleanup of a socket failed")
        finally:
            self.listener._done(self)
