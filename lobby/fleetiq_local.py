"""A local stand-in for the GameLift FleetIQ API (the game-server subset).

moto does not implement GameLift, so this serves the six FleetIQ game-server
operations over the AWS JSON 1.1 protocol well enough that the real boto3
``gamelift`` client, pointed at it with ``endpoint_url``, works unchanged:
laptops and tests exercise the very code path production uses.

Only the stdlib is used so it can run anywhere the package is importable.
Signatures and credentials are ignored.

Test hooks (not part of the AWS API):

* ``POST /_local/faults`` with ``{"<Operation>": [fault, ...]}`` queues one
  fault per upcoming call of that operation. A fault is an object with
  optional keys ``type`` (error ``__type``), ``status`` (HTTP status, default
  400), ``message``, ``delay`` (seconds to wait before answering) and
  ``disconnect`` (close the connection without answering). An entry without
  ``type`` and ``disconnect`` only delays; the call is then served normally.
* ``DELETE /_local/faults`` clears every queued fault.
* ``GET /_local/faults`` answers ``{"queued": {op: count}, "in_flight": n}``: faults
  not yet used, and faulted calls still being served (delayed), so a test can
  wait until every injected fault has played out.
* ``GET /_local/health`` answers 200.

Where it matters it behaves like FleetIQ (GameLift FleetIQ guide and API
reference): a claim lapses after ``--claim-ttl-seconds`` (60 on AWS, fixed)
unless the server became UTILIZED; UTILIZED cannot go back to AVAILABLE
(InvalidRequestException); a server with no health report (``UpdateGameServer
HealthCheck=HEALTHY``, or its registration) for ``--health-ttl-seconds`` is
deregistered. With ``--claim-rate-per-second`` it throttles ClaimGameServer as
AWS does by default (per account: 20 a second, bursts of 40; ThrottlingException
past them, which takes no token). Differences kept: AWS first marks a silent server unhealthy and
deregisters it some time later (and may also replace its instance); here it is
simply gone after the TTL. Game server groups are created implicitly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import heapq
import itertools
import json
import logging
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from lobby.tokenbucket import TokenBucket

logger = logging.getLogger("lobby.fleetiq_local")

READY_PREFIX = "FLEETIQ_LOCAL_LISTENING"
JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "GameLift."
# Fixed fake account/region: ARNs only need to look like ARNs to callers.
ARN_PREFIX = "arn:aws:gamelift:us-east-1:123456789012:gameservergroup/"

# Constraints copied from botocore's gamelift service model (2015-10-01) so
# the server rejects what real GameLift rejects. botocore only checks minimum
# lengths client-side, so e.g. an oversized GameServerData reaches the server.
_GROUP_RE = re.compile(r"[a-zA-Z0-9\-.]+")
_GROUP_ARN_RE = re.compile(r"arn:.*:gameservergroup/([a-zA-Z0-9\-.]+)")
_SERVER_ID_RE = re.compile(r"[a-zA-Z0-9\-.]+")
_INSTANCE_ID_RE = re.compile(r"i-[0-9a-zA-Z]{17}")
_NON_BLANK_RE = re.compile(r".*\S.*", re.DOTALL)
MAX_GAME_SERVER_DATA = 1024
MAX_CONNECTION_INFO = 512

AVAILABLE = "AVAILABLE"
UTILIZED = "UTILIZED"


class ApiError(Exception):
    """An error reply: HTTP status plus the ``__type`` botocore maps to an exception."""

    def __init__(self, error_type: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status = status


def _invalid(message: str) -> ApiError:
    return ApiError("InvalidRequestException", message)


@dataclass
class GameServer:
    group: str
    server_id: str
    instance_id: str
    connection_info: str | None
    data: str | None
    registration_time: float
    # Registration order; list pagination resumes after a sequence number so
    # deregistrations between pages neither skip nor repeat servers.
    seq: int
    utilization: str = AVAILABLE
    # time.monotonic() deadline; wall-clock jumps must not end or extend claims.
    claim_expires_at: float | None = None
    last_claim_time: float | None = None
    last_health_check_time: float | None = None
    # time.monotonic() of the registration or the last health report.
    last_seen: float = field(default_factory=time.monotonic)

    def is_claimed(self, now: float) -> bool:
        if self.claim_expires_at is None:
            return False
        if now >= self.claim_expires_at:
            self.claim_expires_at = None
            return False
        return True

    def to_api(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "GameServerGroupName": self.group,
            "GameServerGroupArn": ARN_PREFIX + self.group,
            "GameServerId": self.server_id,
            "InstanceId": self.instance_id,
            "UtilizationStatus": self.utilization,
            "RegistrationTime": self.registration_time,
        }
        if self.connection_info is not None:
            out["ConnectionInfo"] = self.connection_info
        if self.data is not None:
            out["GameServerData"] = self.data
        if self.is_claimed(now):
            out["ClaimStatus"] = "CLAIMED"
        if self.last_claim_time is not None:
            out["LastClaimTime"] = self.last_claim_time
        if self.last_health_check_time is not None:
            out["LastHealthCheckTime"] = self.last_health_check_time
        return out


@dataclass
class _State:
    claim_ttl_seconds: float
    health_ttl_seconds: float = 60.0
    # group name -> server id -> server; dicts keep registration order, which
    # makes "first claimable server" deterministic.
    groups: dict[str, dict[str, GameServer]] = field(default_factory=dict)
    faults: dict[str, deque[dict[str, Any]]] = field(default_factory=dict)
    # What keeps a claim O(log n) with hundreds of servers (bench/storm.py): per
    # group, a heap of (seq, id) of servers that may be claimable, and a heap of
    # (claim expiry, seq, id). Entries are checked when popped, never removed.
    free: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    claims: dict[str, list[tuple[float, int, str]]] = field(default_factory=dict)
    # No server can have gone silent before this (time.monotonic()).
    next_silence_check: float = 0.0
    faults_in_flight: int = 0
    claim_limit: TokenBucket | None = None  # ClaimGameServer's, on time.monotonic()
    seq: Iterator[int] = field(default_factory=itertools.count)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _str_param(
    body: dict[str, Any],
    name: str,
    *,
    required: bool = False,
    min_len: int = 1,
    max_len: int | None = None,
    pattern: re.Pattern[str] | None = None,
    enum: tuple[str, ...] | None = None,
) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise _invalid(f"Missing required parameter: {name}")
        return None
    if not isinstance(value, str):
        raise _invalid(f"{name} must be a string")
    if len(value) < min_len or (max_len is not None and len(value) > max_len):
        bound = f"{min_len}..{max_len}" if max_len is not None else f">= {min_len}"
        raise _invalid(f"{name} length {len(value)} is outside {bound}")
    if pattern is not None and not pattern.fullmatch(value):
        raise _invalid(f"{name} does not match pattern {pattern.pattern}")
    if enum is not None and value not in enum:
        raise _invalid(f"{name} must be one of {', '.join(enum)}")
    return value


def _group_param(body: dict[str, Any]) -> str:
    raw = _str_param(body, "GameServerGroupName", required=True, max_len=256)
    assert raw is not None
    arn = _GROUP_ARN_RE.fullmatch(raw)
    if arn:
        return arn.group(1)
    if not _GROUP_RE.fullmatch(raw) or len(raw) > 128:
        raise _invalid("GameServerGroupName is not a valid name or ARN")
    return raw


def _server_id_param(body: dict[str, Any], *, required: bool) -> str | None:
    return _str_param(
        body, "GameServerId", required=required, min_len=3, max_len=128, pattern=_SERVER_ID_RE
    )


def _data_param(body: dict[str, Any]) -> str | None:
    return _str_param(
        body, "GameServerData", max_len=MAX_GAME_SERVER_DATA, pattern=_NON_BLANK_RE
    )


class FleetIQService:
    """The API semantics, independent of HTTP; every method runs under the state lock."""

    def __init__(self, claim_ttl_seconds: float = 60.0, groups: Iterable[str] = (),
                 health_ttl_seconds: float = 60.0, claim_rate: float = 0.0,
                 claim_burst: int = 40) -> None:
        self._state = _State(
            claim_ttl_seconds=claim_ttl_seconds, health_ttl_seconds=health_ttl_seconds,
            claim_limit=(TokenBucket(claim_rate, claim_burst, time.monotonic())
                         if claim_rate > 0 else None))
        for name in groups:
            self._state.groups.setdefault(name, {})
        self.operations: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "RegisterGameServer": self.register_game_server,
            "DeregisterGameServer": self.deregister_game_server,
            "ClaimGameServer": self.claim_game_server,
            "UpdateGameServer": self.update_game_server,
            "DescribeGameServer": self.describe_game_server,
            "ListGameServers": self.list_game_servers,
        }

    # -- fault injection -------------------------------------------------

    def add_faults(self, spec: Any) -> None:
        if not isinstance(spec, dict):
            raise _invalid("faults must be an object mapping operation -> list of faults")
        parsed: dict[str, list[dict[str, Any]]] = {}
        for op, entries in spec.items():
            if op not in self.operations:
                raise _invalid(f"unknown operation {op!r}")
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                raise _invalid(f"faults for {op} must be a list of objects")
            for entry in entries:
                if "status" in entry and not isinstance(entry["status"], int):
                    raise _invalid("fault status must be an integer")
                if "delay" in entry and not isinstance(entry["delay"], int | float):
                    raise _invalid("fault delay must be a number")
            parsed[op] = entries
        with self._state.lock:
            for op, entries in parsed.items():
                self._state.faults.setdefault(op, deque()).extend(entries)

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.faults.clear()

    def next_fault(self, op: str) -> dict[str, Any] | None:
        """The next fault for `op`; the caller calls `fault_done()` once it has played out."""
        with self._state.lock:
            queue = self._state.faults.get(op)
            if not queue:
                return None
            self._state.faults_in_flight += 1
            return queue.popleft()

    def fault_done(self) -> None:
        with self._state.lock:
            self._state.faults_in_flight -= 1

    def fault_status(self) -> dict[str, Any]:
        with self._state.lock:
            return {"queued": {op: len(q) for op, q in self._state.faults.items() if q},
                    "in_flight": self._state.faults_in_flight}

    # -- operations ------------------------------------------------------

    def call(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        handler = self.operations.get(op)
        if handler is None:
            raise ApiError("UnknownOperationException", f"Unknown operation {op!r}")
        with self._state.lock:
            limit = self._state.claim_limit
            if (op == "ClaimGameServer" and limit is not None
                    and not limit.take(time.monotonic())):
                raise ApiError("ThrottlingException", "Rate exceeded")
            self._expire_silent()
            return handler(body)

    def _expire_silent(self) -> None:
        """Deregister servers that have not reported health for the health TTL."""
        now = time.monotonic()
        if now < self._state.next_silence_check:
            return
        deadline = now - self._state.health_ttl_seconds
        oldest = now
        for servers in self._state.groups.values():
            for server_id in [sid for sid, s in servers.items() if s.last_seen < deadline]:
                logger.info("game server %s: no health report for %.1fs, deregistered",
                            server_id, self._state.health_ttl_seconds)
                del servers[server_id]
            oldest = min([oldest, *(s.last_seen for s in servers.values())])
        # Reports only move last_seen later, and new servers start at now: until
        # the oldest report ages out, nobody can (a scan per call was O(servers)).
        self._state.next_silence_check = oldest + self._state.health_ttl_seconds

    def _group(self, name: str) -> dict[str, GameServer]:
        servers = self._state.groups.get(name)
        if servers is None:
            raise ApiError("NotFoundException", f"Game server group {name} not found")
        return servers

    def _server(self, body: dict[str, Any]) -> GameServer:
        group = _group_param(body)
        server_id = _server_id_param(body, required=True)
        assert server_id is not None
        server = self._group(group).get(server_id)
        if server is None:
            raise ApiError(
                "NotFoundException", f"Game server {server_id} not found in group {group}"
            )
        return server

    def register_game_server(self, body: dict[str, Any]) -> dict[str, Any]:
        group = _group_param(body)
        server_id = _server_id_param(body, required=True)
        instance_id = _str_param(
            body, "InstanceId", required=True, min_len=19, max_len=19, pattern=_INSTANCE_ID_RE
        )
        connection_info = _str_param(
            body, "ConnectionInfo", max_len=MAX_CONNECTION_INFO, pattern=_NON_BLANK_RE
        )
        data = _data_param(body)
        assert server_id is not None and instance_id is not None
        # Real FleetIQ groups are created by CreateGameServerGroup; implicit
        # creation keeps local setup to "register some servers".
        servers = self._state.groups.setdefault(group, {})
        if server_id in servers:
            raise ApiError(
                "ConflictException", f"Game server {server_id} is already registered in {group}"
            )
        server = GameServer(
            group=group,
            server_id=server_id,
            instance_id=instance_id,
            connection_info=connection_info,
            data=data,
            registration_time=time.time(),
            seq=next(self._state.seq),
        )
        servers[server_id] = server
        self._may_be_free(server)
        self._state.next_silence_check = min(
            self._state.next_silence_check, server.last_seen + self._state.health_ttl_seconds)
        return {"GameServer": server.to_api(time.monotonic())}

    def _may_be_free(self, server: GameServer) -> None:
        heapq.heappush(self._state.free.setdefault(server.group, []),
                       (server.seq, server.server_id))

    def _first_claimable(self, group: str, servers: dict[str, GameServer],
                         now: float) -> GameServer | None:
        """The first claimable server in registration order (as a scan of the
        group would find it), from the heaps."""
        free = self._state.free.setdefault(group, [])
        claims = self._state.claims.setdefault(group, [])
        while claims and claims[0][0] <= now:
            _, seq, sid = heapq.heappop(claims)
            lapsed = servers.get(sid)
            if lapsed is not None and lapsed.seq == seq:
                heapq.heappush(free, (seq, sid))
        while free:
            seq, sid = free[0]
            server = servers.get(sid)
            if (server is not None and server.seq == seq and server.utilization == AVAILABLE
                    and not server.is_claimed(now)):
                return server
            heapq.heappop(free)  # gone, claimed or utilized: back in when it lapses
        return None

    def deregister_game_server(self, body: dict[str, Any]) -> dict[str, Any]:
        server = self._server(body)
        del self._state.groups[server.group][server.server_id]
        return {}

    def claim_game_server(self, body: dict[str, Any]) -> dict[str, Any]:
        group = _group_param(body)
        server_id = _server_id_param(body, required=False)
        data = _data_param(body)
        # FilterOption.InstanceStatuses filters on instance draining state,
        # which this stand-in does not model; accepted and ignored.
        servers = self._group(group)
        now = time.monotonic()
        if server_id is not None:
            server = servers.get(server_id)
            if server is None:
                raise ApiError(
                    "NotFoundException", f"Game server {server_id} not found in group {group}"
                )
            if server.utilization != AVAILABLE or server.is_claimed(now):
                raise ApiError(
                    "ConflictException", f"Game server {server_id} is already claimed or utilized"
                )
        else:
            server = self._first_claimable(group, servers, now)
            if server is None:
                raise ApiError(
                    "OutOfCapacityException", f"No available game servers in group {group}"
                )
        server.claim_expires_at = now + self._state.claim_ttl_seconds
        heapq.heappush(self._state.claims.setdefault(group, []),
                       (server.claim_expires_at, server.seq, server.server_id))
        server.last_claim_time = time.time()
        if data is not None:
            server.data = data
        return {"GameServer": server.to_api(now)}

    def update_game_server(self, body: dict[str, Any]) -> dict[str, Any]:
        server = self._server(body)
        utilization = _str_param(body, "UtilizationStatus", enum=(AVAILABLE, UTILIZED))
        health = _str_param(body, "HealthCheck", enum=("HEALTHY",))
        data = _data_param(body)
        now = time.monotonic()
        if utilization == AVAILABLE and server.utilization == UTILIZED:
            raise _invalid(
                f"Game server {server.server_id} is UTILIZED: its status can not go back to"
                " AVAILABLE (deregister it and register again)")
        if utilization == UTILIZED:
            # A game that is running must not be handed out again when the
            # 60 s claim window lapses, so a live claim becomes permanent.
            server.utilization = UTILIZED
            if server.is_claimed(now):
                server.claim_expires_at = float("inf")
        elif utilization == AVAILABLE:
            server.utilization = AVAILABLE
            server.claim_expires_at = None
            self._may_be_free(server)
        if health is not None:
            server.last_health_check_time = time.time()
            server.last_seen = now
        if data is not None:
            server.data = data
        return {"GameServer": server.to_api(now)}

    def describe_game_server(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"GameServer": self._server(body).to_api(time.monotonic())}

    def list_game_servers(self, body: dict[str, Any]) -> dict[str, Any]:
        group = _group_param(body)
        order = _str_param(body, "SortOrder", enum=("ASCENDING", "DESCENDING")) or "ASCENDING"
        limit = body.get("Limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
            raise _invalid("Limit must be an integer")
        if limit is not None and limit < 1:
            raise _invalid("Limit must be >= 1")
        token = _str_param(body, "NextToken", max_len=1024)
        servers = sorted(self._group(group).values(), key=lambda s: s.seq)
        descending = order == "DESCENDING"
        if descending:
            servers.reverse()
        if token is not None:
            after = _decode_token(token, group, order)
            servers = [s for s in servers if (s.seq < after if descending else s.seq > after)]
        page = servers if limit is None else servers[:limit]
        out: dict[str, Any] = {"GameServers": [s.to_api(time.monotonic()) for s in page]}
        if len(page) < len(servers):
            out["NextToken"] = _encode_token(page[-1].seq, group, order)
        return out


def _encode_token(seq: int, group: str, order: str) -> str:
    raw = json.dumps({"after": seq, "group": group, "order": order}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_token(token: str, group: str, order: str) -> int:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
        after = decoded["after"]
        ok = decoded["group"] == group and decoded["order"] == order and isinstance(after, int)
    except (binascii.Error, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise _invalid("Invalid NextToken")
    return int(after)


class _BadRequest(Exception):
    """A request this server cannot read: answered 400, then the connection closes."""


class _Http:
    """HTTP/1.1 with kept-alive connections on one asyncio loop.

    One thread and no GIL handoffs: a burst of hundreds of calls on dozens of
    connections costs this process a fraction of what a thread per connection
    did, which matters where the lobby under test shares the machine's cores
    with it (bench/storm.py). A delayed fault sleeps on its own connection only.
    """

    def __init__(self, service: FleetIQService) -> None:
        self.service = service

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while await self._one(reader, writer, peer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   peer: Any) -> bool:
        """Serve one request; False when the connection is done."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # closed between requests
        except asyncio.LimitOverrunError:
            self._respond(writer, 431, {"__type": "BadRequest", "message": "headers too long"},
                          close=True)
            return False
        try:
            method, path, version, headers = _parse_head(head)
            length = int(headers.get("content-length") or 0)
            if length < 0:
                raise _BadRequest("negative Content-Length")
        except (_BadRequest, ValueError) as exc:
            self._respond(writer, 400, {"__type": "BadRequest", "message": str(exc)}, close=True)
            return False
        body = await reader.readexactly(length) if length > 0 else b""
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        logger.debug("%s %s %s", peer, method, path)
        try:
            status, payload = await self._route(method, path, headers, body, writer)
        except _Disconnected:
            return False
        except ApiError as err:
            status, payload = err.status, {"__type": err.error_type, "message": err.message}
        self._respond(writer, status, payload, close=not keep)
        await writer.drain()
        return keep

    def _respond(self, writer: asyncio.StreamWriter, status: int, payload: dict[str, Any],
                 *, close: bool) -> None:
        body = json.dumps(payload).encode()
        reason = HTTPStatus(status).phrase if status in _STATUSES else "Unknown"
        head = (f"HTTP/1.1 {status} {reason}\r\n"
                f"Date: {formatdate(usegmt=True)}\r\n"
                f"Content-Type: {JSON_CONTENT_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\n"
                f"x-amzn-RequestId: {uuid.uuid4()}\r\n"
                + ("Connection: close\r\n" if close else "") + "\r\n")
        writer.write(head.encode("latin-1") + body)

    async def _route(self, method: str, path: str, headers: dict[str, str], body: bytes,
                     writer: asyncio.StreamWriter) -> tuple[int, dict[str, Any]]:
        service = self.service
        if method == "GET":
            if path == "/_local/health":
                return 200, {"status": "ok"}
            if path == "/_local/faults":
                return 200, service.fault_status()
        elif method == "DELETE":
            if path == "/_local/faults":
                service.clear_faults()
                return 200, {}
        elif method == "POST":
            if path == "/_local/faults":
                service.add_faults(_json_body(body))
                return 200, {}
            if path == "/":
                return await self._api_call(headers, body, writer)
        else:
            raise ApiError("UnsupportedOperation", f"Unsupported method {method}", 501)
        raise ApiError("NotFoundException", f"No route for {method} {path}", 404)

    async def _api_call(self, headers: dict[str, str], body: bytes,
                        writer: asyncio.StreamWriter) -> tuple[int, dict[str, Any]]:
        service = self.service
        target = headers.get("x-amz-target", "")
        parsed = _json_body(body)
        op = target[len(TARGET_PREFIX):] if target.startswith(TARGET_PREFIX) else ""
        if op not in service.operations:
            raise ApiError("UnknownOperationException", f"Unknown operation {target!r}")
        if not isinstance(parsed, dict):
            raise ApiError("SerializationException", "Body must be a JSON object")
        group = parsed.get("GameServerGroupName")
        fault = service.next_fault(op)
        if fault is None:
            return 200, _serve_call(service, op, parsed, group)
        try:
            delay = float(fault.get("delay", 0))
            if delay > 0:
                await asyncio.sleep(delay)  # this connection only; other clients go on
            if fault.get("disconnect"):
                logger.info("%s group=%s -> injected disconnect", op, group)
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                raise _Disconnected
            if "type" in fault:
                err = ApiError(str(fault["type"]), str(fault.get("message", "injected fault")),
                               int(fault.get("status", 400)))
                logger.info("%s group=%s -> injected %s %s", op, group, err.status,
                            err.error_type)
                raise err
            return 200, _serve_call(service, op, parsed, group)
        finally:
            service.fault_done()


class _Disconnected(Exception):
    """An injected disconnect: the connection is gone, nothing to answer."""


_STATUSES = {int(s) for s in HTTPStatus}


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequest(f"bad request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers


def _json_body(raw: bytes) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError("SerializationException", f"Body is not valid JSON: {exc}") from exc


def _serve_call(service: FleetIQService, op: str, body: dict[str, Any],
                group: Any) -> dict[str, Any]:
    try:
        result = service.call(op, body)
    except ApiError as err:
        logger.info("%s group=%s -> %s %s", op, group, err.status, err.error_type)
        raise
    server_id = result.get("GameServer", {}).get("GameServerId", "")
    logger.info("%s group=%s -> 200 %s", op, group, server_id)
    return result


class FleetIQLocal:
    """The local endpoint as an object: ``start()`` serves from a background thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9090,
        claim_ttl_seconds: float = 60.0,
        groups: Iterable[str] = (),
        health_ttl_seconds: float = 60.0,
        claim_rate: float = 0.0,
        claim_burst: int = 40,
    ) -> None:
        self.host = host
        self.service = FleetIQService(claim_ttl_seconds=claim_ttl_seconds, groups=groups,
                                      health_ttl_seconds=health_ttl_seconds,
                                      claim_rate=claim_rate, claim_burst=claim_burst)
        self._requested_port = port
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()

    @property
    def port(self) -> int:
        if self._sock is None:
            return self._requested_port
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def bind(self) -> None:
        if self._sock is None:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            # A burst of hundreds of new connections must not overflow the accept
            # backlog; dropped SYNs cost the client a 1 s retransmit each.
            self._sock = socket.create_server((self.host, self._requested_port),
                                              family=family, backlog=1024)

    async def _serve(self) -> None:
        assert self._sock is not None
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        http = _Http(self.service)
        server = await asyncio.start_server(http.serve, sock=self._sock)
        self._ready.set()
        async with server:
            await self._stopping.wait()

    def start(self) -> None:
        self.bind()
        self._ready.clear()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),),
                                        name="fleetiq-local", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def serve_forever(self) -> None:
        self.bind()
        asyncio.run(self._serve())

    def stop(self) -> None:
        if self._thread is not None:
            if self._loop is not None and self._stopping is not None:
                self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join()
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> FleetIQLocal:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lobby fleetiq-local",
        description="Serve a local GameLift FleetIQ endpoint for the boto3 gamelift client.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090, help="0 picks a free port")
    parser.add_argument("--claim-ttl-seconds", type=float, default=60.0,
                        help="a claim lapses after this unless the server became UTILIZED "
                             "(60 on AWS)")
    parser.add_argument("--health-ttl-seconds", type=float, default=60.0,
                        help="a server with no health report for this long is deregistered")
    parser.add_argument("--claim-rate-per-second", type=float, default=0.0,
                        help="throttle ClaimGameServer past this many a second, as AWS "
                             "does (20 by default, per account); 0: no limit (default)")
    parser.add_argument("--claim-burst", type=int, default=40,
                        help="with --claim-rate-per-second: claims allowed at once (40 on AWS)")
    parser.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME",
        help="create this game server group up front (repeatable)",
    )
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="INFO logs every call (default); the bench runs with WARNING")
    args = parser.parse_args(argv)
    if args.claim_ttl_seconds <= 0:
        parser.error("--claim-ttl-seconds must be positive")
    if args.health_ttl_seconds <= 0:
        parser.error("--health-ttl-seconds must be positive")
    if args.claim_rate_per_second < 0 or args.claim_burst < 1:
        parser.error("--claim-rate-per-second must be >= 0 and --claim-burst >= 1")
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    local = FleetIQLocal(
        host=args.host,
        port=args.port,
        claim_ttl_seconds=args.claim_ttl_seconds,
        groups=args.group,
        health_ttl_seconds=args.health_ttl_seconds,
        claim_rate=args.claim_rate_per_second,
        claim_burst=args.claim_burst,
    )
    local.bind()

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM (what supervisors and test fixtures send) shuts down like ^C.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    # Supervisors wait for this exact line on stdout before using the port.
    print(f"{READY_PREFIX} port={local.port}", flush=True)
    try:
        local.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        local.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
