"""HTTP on the lobby's port, beside the WebSocket: requests with bodies, keep-alive, JSON errors.

websockets' `process_request` sees only a request's head: it cannot read a body,
so a POST with a JSON body used to get no reply at all. Every connection now
starts in a small front protocol that parses HTTP/1.1 with h11 (python-hyper's
sans-I/O parser: framing, Content-Length and chunked bodies, pipelining and
keep-alive are its job, not ours). The first request of a connection that asks
for a WebSocket upgrade is handed, with every byte read so far, to the
websockets connection the server would have used anyway; everything else is
answered here. One port serves both, so nothing changes for load balancers,
Docker port maps or clients.

The interface for whoever adds HTTP endpoints (game-server API, /metrics,
/readyz, /admin/..., static files under /play/)::

    async def heartbeat(request: HttpRequest) -> HttpResponse:
        body = request.json()                 # {} without a body; HttpError 400/415 if bad
        server_id = request.params["server_id"]
        return json_response(200, {"ok": True})

    node.sockets.http.add("POST", "/v1/servers/{server_id}/heartbeat", heartbeat)
    node.sockets.http.add("GET", "/play/", static_files, prefix=True)

A handler takes an `HttpRequest` (method, path without the query, query string,
lower-cased headers, body bytes, path parameters) and returns an `HttpResponse`
(or a coroutine of one). It may raise `HttpError(status, code, message)` for an
error answer; any other exception becomes 500 `INTERNAL` (and is logged). The
router answers 404 `NOT_FOUND` and 405 `METHOD` (with `Allow`) by itself, and a
HEAD request is served by the GET handler without the body. Errors are always
`{"ok": false, "error": {"code": CODE, "message": TEXT}}` (`error_response`).
Bodies are capped at `max_body_bytes` (413 `PAYLOAD_TOO_LARGE`).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import h11

log = logging.getLogger("lobby.http")

MAX_BODY_BYTES = 64 * 1024
MAX_HEAD_BYTES = 16 * 1024
# A connection must send its request head (or its next one, on keep-alive)
# within these; a silent socket holds a file descriptor for no one.
HEAD_TIMEOUT_SECONDS = 10.0
IDLE_TIMEOUT_SECONDS = 15.0

# Every `error.code` an HTTP answer of the lobby can carry (protocol.md documents each;
# tests/test_protocol_doc.py checks it). Handlers may add codes of the WebSocket
# table (e.g. SESSION_NOT_FOUND, which lobby.errors.ErrorCode already documents).
HTTP_ERROR_CODES = (
    "BAD_REQUEST", "UNSUPPORTED_MEDIA_TYPE", "PAYLOAD_TOO_LARGE", "UNAUTHORIZED", "FORBIDDEN",
    "DISABLED", "NOT_FOUND", "METHOD", "STATE_CONFLICT", "INTERNAL",
    "SERVER_NOT_REGISTERED", "UNAVAILABLE",
)


class HttpError(Exception):
    """Raised by a handler: answered as `error_response(status, code, message)`."""

    def __init__(self, status: int, code: str, message: str,
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = int(status)
        self.code = code
        self.message = message
        self.headers = headers or []


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str  # percent-encoding left as sent; no query string
    query: str
    headers: Mapping[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)  # "{name}" segments of the route
    peer: Any = None

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    def json(self) -> Any:
        """The JSON body; {} when there is none. Raises HttpError 415 for a body
        that is not `application/json` (or `+json`), 400 for one that does not parse."""
        if not self.body:
            return {}
        ctype = self.header("content-type").split(";", 1)[0].strip().lower()
        if ctype != "application/json" and not ctype.endswith("+json"):
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE",
                            "send the body as JSON with 'Content-Type: application/json'")
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, ValueError) as err:
            raise HttpError(HTTPStatus.BAD_REQUEST, "BAD_REQUEST",
                            f"body is not valid JSON: {err}") from None

    def json_object(self) -> dict[str, Any]:
        """`json()`, which must be an object."""
        value = self.json()
        if not isinstance(value, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, "BAD_REQUEST", "body must be a JSON object")
        return value


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


HttpHandler = Callable[[HttpRequest], "Awaitable[HttpResponse] | HttpResponse"]


def json_response(status: int, payload: Any,
                  headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return HttpResponse(int(status), body, "application/json", list(headers or []))


def error_response(status: int, code: str, message: str,
                   headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    return json_response(status, {"ok": False, "error": {"code": code, "message": message}},
                         headers)


def text_response(status: int, text: str,
                  content_type: str = "text/plain; charset=utf-8") -> HttpResponse:
    return HttpResponse(int(status), text.encode(), content_type)


@dataclass(slots=True)
class _Route:
    methods: frozenset[str] | None  # None: any method
    segments: tuple[str, ...]
    prefix: bool
    handler: HttpHandler

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if self.prefix:
            if len(parts) < len(self.segments):
                return None
        elif len(parts) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for want, got in zip(self.segments, parts, strict=False):
            if want.startswith("{") and want.endswith("}"):
                if not got:
                    return None
                params[want[1:-1]] = got
            elif want != got:
                return None
        return params


class Router:
    """Method + path → handler. Patterns are literal segments and `{name}` segments;
    `prefix=True` also matches anything below the pattern (a path ending in "/")."""

    def __init__(self) -> None:
        self._routes: list[_Route] = []

    def add(self, method: str | list[str] | tuple[str, ...] | None, pattern: str,
            handler: HttpHandler, *, prefix: bool = False) -> None:
        methods = None if method is None else frozenset(
            [method.upper()] if isinstance(method, str) else [m.upper() for m in method])
        segments = tuple(pattern.strip("/").split("/")) if pattern.strip("/") else ()
        route = _Route(methods, segments, prefix or (pattern.endswith("/") and len(segments) > 0),
                       handler)
        # Longer (more specific) patterns first, exact before prefix.
        self._routes.append(route)
        self._routes.sort(key=lambda r: (r.prefix, -len(r.segments)))

    def __setitem__(self, pattern: str, handler: HttpHandler) -> None:
        """`router["/metrics"] = handler`: any method (a pattern ending in "/" is a prefix)."""
        self.add(None, pattern, handler)

    def resolve(self, method: str, path: str) -> tuple[HttpHandler, dict[str, str]]:
        parts = path.strip("/").split("/") if path.strip("/") else []
        allowed: set[str] = set()
        for route in self._routes:
            params = route.match(parts)
            if params is None:
                continue
            if route.methods is None or method in route.methods or (
                    method == "HEAD" and "GET" in route.methods):
                return route.handler, params
            allowed |= route.methods
        if allowed:
            allow = ", ".join(sorted(allowed))
            raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "METHOD", f"use {allow}",
                            [("Allow", allow)])
        raise HttpError(HTTPStatus.NOT_FOUND, "NOT_FOUND",
                        "no such endpoint; the WebSocket is at /ws")

    async def dispatch(self, request: HttpRequest) -> HttpResponse:
        try:
            handler, request.params = self.resolve(request.method, request.path)
            result = handler(request)
            if asyncio.iscoroutine(result):
                result = await result
            assert isinstance(result, HttpResponse), f"handler returned {result!r}"
            return result
        except HttpError as err:
            return error_response(err.status, err.code, err.message, err.headers)
        except Exception:
            log.exception("HTTP %s %s failed", request.method, request.path)
            return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "INTERNAL",
                                  "the server failed; see its log")


class HttpService:
    """The HTTP side of one listening port: the router, limits, live connections."""

    def __init__(self, router: Router | None = None, *, max_body_bytes: int = MAX_BODY_BYTES,
                 head_timeout: float = HEAD_TIMEOUT_SECONDS,
                 idle_timeout: float = IDLE_TIMEOUT_SECONDS) -> None:
        self.router = router or Router()
        self.max_body_bytes = max_body_bytes
        self.head_timeout = head_timeout
        self.idle_timeout = idle_timeout
        self.connections: set[FrontProtocol] = set()
        self.closing = False
        self.requests = 0

    def close_all(self) -> None:
        """Server shutdown: idle keep-alive connections close now, busy ones after
        their answer (which says `Connection: close`)."""
        self.closing = True
        for conn in list(self.connections):
            conn.shutdown()


def _is_upgrade(headers: Mapping[str, str]) -> bool:
    return "websocket" in headers.get("upgrade", "").lower()


def _sniff_upgrade(head: bytes | bytearray) -> bool:
    """Whether a complete request head asks for a WebSocket (as `_is_upgrade` would
    say of its first Upgrade header), read without h11: the cold path of every
    player. Whatever this lets through, websockets' own parser still validates."""
    if not head.startswith(b"GET "):
        return False
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"upgrade":
            return b"websocket" in value.lower()
    return False


class FrontProtocol(asyncio.Protocol):
    """The first protocol of every accepted connection (see the module docstring).

    `make_ws()` builds the websockets connection the socket becomes if its first
    request is a WebSocket upgrade. Until the first request head is complete the
    bytes are only collected: an upgrade is handed to websockets at once (no h11
    parser, task or timeout of its own: a third of a cold join's HTTP cost), and
    anything else starts the h11 side with the bytes read so far."""

    def __init__(self, service: HttpService, make_ws: Callable[[], asyncio.Protocol]) -> None:
        self.service = service
        self._make_ws = make_ws
        self._h11: h11.Connection | None = None  # made once the request is not an upgrade
        self._raw: bytearray | None = bytearray()  # the first request's bytes, for a handoff
        self._transport: asyncio.Transport | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0  # loop time by which the first request head must be in
        self._eof = False
        self._lost = False
        self._busy = False
        self._handed_off = False
        self._unread = 0

    # asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses)
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self.service.connections.add(self)
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self.service.head_timeout
        self._timer = loop.call_at(self._deadline, self._head_timed_out)
        if self._raw:
            # Over TLS the request can arrive before the TLS front hands us the
            # transport (lobby.addresses.TlsFront): decide on it now.
            self._sniff(b"")
        if self._eof and self._h11 is None and not self._handed_off:
            self._start_h11()
        if not self._handed_off and not transport.is_closing():
            transport.resume_reading()  # TlsFront paused it for the handshake

    def data_received(self, data: bytes) -> None:
        if self._h11 is None:
            self._sniff(data)
            return
        if self._raw is not None:
            self._raw += data
        try:
            self._h11.receive_data(data)
        except RuntimeError:
            # h11 refuses data after it has decided to close: the rest is dropped.
            return
        assert self._wake is not None
        self._wake.set()
        # Bound what a pipelining or flooding peer can make us buffer while a
        # handler runs: reading resumes when the next event is wanted.
        self._unread += len(data)
        if self._unread > MAX_HEAD_BYTES + self.service.max_body_bytes:
            assert self._transport is not None
            self._transport.pause_reading()

    def _sniff(self, data: bytes) -> None:
        raw = self._raw
        assert raw is not None
        start = max(0, len(raw) - 3) if data else 0  # the end may straddle two reads
        raw += data
        if self._transport is None:
            return  # connection_made decides (TLS: data before the transport)
        end = raw.find(b"\r\n\r\n", start)
        if end < 0:
            if len(raw) <= MAX_HEAD_BYTES:
                return  # more to come (h11 answers a head that grows past the limit)
        elif _sniff_upgrade(raw[:end]):
            self._cancel_timer()
            self._hand_off()
            return
        self._start_h11()

    def _start_h11(self) -> None:
        """The first request is plain HTTP (or unreadable): h11's turn."""
        self._cancel_timer()
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._wake = asyncio.Event()
        assert self._raw is not None
        if self._raw:
            with contextlib.suppress(RuntimeError):
                self._h11.receive_data(bytes(self._raw))
            self._unread = len(self._raw)
        if self._eof:
            with contextlib.suppress(RuntimeError):
                self._h11.receive_data(b"")
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._transport is not None and not self._handed_off:
            self._transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def eof_received(self) -> bool:
        self._eof = True
        if self._h11 is None:
            if self._transport is not None:
                self._start_h11()  # h11 tells an incomplete request from a closed one
            return True
        with contextlib.suppress(RuntimeError):
            self._h11.receive_data(b"")
        assert self._wake is not None
        self._wake.set()
        return True  # half-open: we may still answer, then close

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel_timer()
        self.service.connections.discard(self)
        if self._wake is not None:
            self._wake.set()

    # ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        if not self._busy and self._transport is not None and not self._handed_off:
            self._transport.close()

    async def _next_event(self, wait: float) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        assert self._h11 is not None and self._wake is not None
        while True:
            event = self._h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self._lost:
                return h11.ConnectionClosed()
            assert self._transport is not None
            self._unread = 0
            self._transport.resume_reading()
            self._wake.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                await self._wake.wait()

    async def _serve(self) -> None:
        transport = self._transport
        assert transport is not None
        try:
            first = True
            while not self._lost:
                # The first head's time started at the TCP accept (connection_made).
                timeout = (self._deadline - asyncio.get_running_loop().time() if first
                           else self.service.idle_timeout)
                try:
                    event = await self._next_event(timeout)
                except TimeoutError:
                    return
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                assert isinstance(event, h11.Request), event
                headers = _headers(event.headers)
                if first and _is_upgrade(headers):
                    self._hand_off()
                    return
                self._raw = None  # only a connection's first request may become a WebSocket
                first = False
                self._busy = True
                response = await self._answer(event, headers)
                if not await self._send(response, head=event.method == b"HEAD"):
                    return
                self._busy = False
                if self._h11.our_state is h11.MUST_CLOSE or self.service.closing:
                    return
                self._h11.start_next_cycle()
        except h11.RemoteProtocolError as err:
            await self._send(error_response(err.error_status_hint, "BAD_REQUEST",
                                            f"malformed HTTP request: {err}"), close=True)
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            if not self._handed_off:
                transport.close()

    async def _answer(self, event: h11.Request, headers: dict[str, str]) -> HttpResponse:
        self.service.requests += 1
        target = event.target.decode("ascii", "replace")
        path, _, query = target.partition("?")
        method = event.method.decode("ascii", "replace").upper()
        if _is_upgrade(headers):
            return self._refuse(HTTPStatus.BAD_REQUEST, "BAD_REQUEST",
                                "a WebSocket upgrade must be the first request of a connection")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.service.max_body_bytes:
            return self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "PAYLOAD_TOO_LARGE",
                                f"bodies are limited to {self.service.max_body_bytes} bytes")
        body = bytearray()
        while True:
            try:
                part = await self._next_event(self.service.head_timeout)
            except TimeoutError:
                return self._refuse(HTTPStatus.REQUEST_TIMEOUT, "BAD_REQUEST",
                                    "the request body did not arrive in time")
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > self.service.max_body_bytes:
                    return self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "PAYLOAD_TOO_LARGE",
                                        f"bodies are limited to {self.service.max_body_bytes}"
                                        " bytes")
            elif isinstance(part, h11.EndOfMessage):
                break
            else:  # the peer closed mid-body
                raise h11.RemoteProtocolError("connection closed in the middle of the body")
        request = HttpRequest(method, path or "/", query, headers, bytes(body),
                              peer=self._transport.get_extra_info("peername")
                              if self._transport else None)
        return await self.service.router.dispatch(request)

    def _refuse(self, status: int, code: str, message: str) -> HttpResponse:
        response = error_response(status, code, message)
        response.headers.append(("Connection", "close"))
        return response

    async def _send(self, response: HttpResponse, *, head: bool = False,
                    close: bool = False) -> bool:
        if self._lost or self._transport is None:
            return False
        assert self._h11 is not None
        headers = [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Server", "lobby"),
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *response.headers,
        ]
        if (close or self.service.closing) and not any(
                k.lower() == "connection" for k, _ in headers):
            headers.append(("Connection", "close"))
        try:
            data = self._h11.send(h11.Response(status_code=response.status, headers=headers))
            if not head and response.body:
                data += self._h11.send(h11.Data(data=response.body))
            data += self._h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            # e.g. answering a request h11 could not parse at all: write it raw.
            if not close:
                raise
            data = (f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}\r\n"
                    + "".join(f"{k}: {v}\r\n" for k, v in headers)
                    + "Connection: close\r\n\r\n").encode() + response.body
        self._transport.write(data)
        return True

    def _hand_off(self) -> None:
        """Become the websockets connection, replaying what was read so far."""
        transport = self._transport
        assert transport is not None and self._raw is not None
        self._handed_off = True
        self.service.connections.discard(self)
        ws = self._make_ws()
        transport.set_protocol(ws)
        ws.connection_made(transport)
        ws.data_received(bytes(self._raw))
        self._raw = None
        if self._eof:
            ws.eof_received()
        if not transport.is_closing():  # a TLS transport cannot resume once closed
            transport.resume_reading()


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out
