"""The operator's HTTP endpoints: /metrics, /readyz and the admin API and console.

Handlers take a `Call` (one HTTP request, whatever serves it) and return a
`Reply`; `lobby.app` adapts them to the HTTP layer of the node's port.

Access: /metrics and /metrics.json are open unless --metrics-key is set;
/admin/... answers only with --admin-key, sent as `Authorization: Bearer KEY`
(the console page itself, /admin/, holds no data and asks for the key).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from lobby.errors import ErrorCode, LobbyError
from lobby.handlers import now_ms
from lobby.logs import fields
from lobby.session import LIVE_STATES, SessionRecord, public_session

if TYPE_CHECKING:
    from lobby.app import LobbyNode

log = logging.getLogger("lobby.admin")

CLOSED_BY_ADMIN = "closed_by_admin"
SCAN_BATCH = 200
MAX_SCAN_BATCHES = 50  # one listing page reads at most this many batches


@dataclass(slots=True)
class Call:
    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""

    def arg(self, name: str) -> str:
        values = parse_qs(self.query).get(name)
        return values[0] if values else ""


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Call], Awaitable[Reply]]


def json_reply(status: int, payload: Any, headers: list[tuple[str, str]] | None = None
               ) -> Reply:
    return Reply(status, json.dumps(payload, separators=(",", ":")).encode(),
                 "application/json", headers or [])


def error_reply(status: int, code: str, message: str,
                headers: list[tuple[str, str]] | None = None) -> Reply:
    return json_reply(status, {"ok": False, "error": {"code": code, "message": message}},
                      headers)


def check_key(call: Call, key: str | None, flag: str) -> Reply | None:
    """None when the call may go on; else the refusal."""
    if key is None:
        return error_reply(403, "DISABLED", f"this endpoint is off: start the lobby with {flag}")
    scheme, _, given = call.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return error_reply(401, "UNAUTHORIZED", "send the key as 'Authorization: Bearer KEY'",
                           [("WWW-Authenticate", 'Bearer realm="lobby"')])
    if not hmac.compare_digest(given.strip().encode(), key.encode()):
        return error_reply(403, "FORBIDDEN", "wrong key")
    return None


def check_any_key(call: Call, keys: list[str]) -> Reply | None:
    """None when no key is required or one of `keys` is given; else the refusal.
    Every key is compared (no early exit), so the time taken says nothing of which."""
    if not keys:
        return None
    scheme, _, given = call.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return error_reply(401, "UNAUTHORIZED",
                           "send the metrics, admin or server key as 'Authorization: Bearer KEY'",
                           [("WWW-Authenticate", 'Bearer realm="lobby"')])
    token = given.strip().encode()
    if not sum(hmac.compare_digest(token, key.encode()) for key in keys):
        return error_reply(403, "FORBIDDEN", "wrong key")
    return None


def admin_session(rec: SessionRecord) -> dict[str, Any]:
    """The public session object plus what an operator needs to judge it."""
    out = public_session(rec)
    out["updated_at"] = rec["updated"] / 1000
    out["active_at"] = rec["active"] / 1000
    return out


def _matches(rec: SessionRecord, state: str, q: str) -> bool:
    if state and rec["state"] != state:
        return False
    if not q:
        return True
    hay = [rec["id"], rec["name"], *(m["id"] for m in rec["members"]),
           *(m["name"] for m in rec["members"])]
    return any(q in h.lower() for h in hay)


class OpsAPI:
    def __init__(self, node: LobbyNode) -> None:
        self.node = node
        s = node.settings
        self.admin_key = s.admin_key or None
        self.metrics_key = s.metrics_key or None
        # What leaks (identity): once any operator or server key is set, metrics are
        # for whoever holds one of them; a lobby with no key at all (a laptop) is open.
        self.metrics_keys = [k for k in (s.metrics_key, s.admin_key, s.server_key) if k]
        self.scan_batch = SCAN_BATCH

    # metrics and readiness ---------------------------------------------------
    async def metrics(self, call: Call) -> Reply:
        denied = check_any_key(call, self.metrics_keys)
        if denied is not None:
            return denied
        from lobby.metrics import CONTENT_TYPE

        return Reply(200, await self.node.prometheus.render(), CONTENT_TYPE)

    async def metrics_json(self, call: Call) -> Reply:
        denied = check_any_key(call, self.metrics_keys)
        if denied is not None:
            return denied
        return json_reply(200, self.node.metrics())

    async def readyz(self, call: Call) -> Reply:
        ready, detail = await self.node.readiness()
        return json_reply(200 if ready else 503, detail)

    # admin -------------------------------------------------------------------
    async def admin(self, call: Call) -> Reply:
        path = call.path
        if path in ("/admin", "/admin/", "/admin/index.html"):
            if call.method not in ("GET", "HEAD"):
                return error_reply(405, "METHOD", "use GET", [("Allow", "GET, HEAD")])
            page = resources.files("lobby").joinpath("static/admin.html").read_bytes()
            return Reply(200, page, "text/html; charset=utf-8",
                         [("Cache-Control", "no-store")])
        denied = check_key(call, self.admin_key, "--admin-key")
        if denied is not None:
            return denied
        parts = [unquote(p) for p in path[len("/admin/"):].split("/")]
        try:
            if parts == ["sessions"]:
                return self._method(call, "GET") or await self._list(call)
            if parts == ["nodes"]:
                return self._method(call, "GET") or json_reply(
                    200, {"ok": True, "nodes": await self.node.registry.nodes()})
            if len(parts) == 2 and parts[0] == "sessions" and parts[1]:
                return self._method(call, "GET") or await self._get(parts[1])
            if len(parts) == 3 and parts[0] == "sessions" and parts[2] == "close":
                return self._method(call, "POST") or await self._close(call, parts[1])
            if len(parts) == 4 and parts[0] == "sessions" and parts[2] == "kick" and parts[3]:
                return self._method(call, "POST") or await self._kick(parts[1], parts[3])
        except LobbyError as err:
            if err.code == ErrorCode.SESSION_NOT_FOUND:
                return error_reply(404, err.code.value, err.message)
            return error_reply(409, "STATE_CONFLICT", err.message)
        return error_reply(404, "NOT_FOUND", "no such admin call")

    @staticmethod
    def _method(call: Call, method: str) -> Reply | None:
        if call.method == method or (method == "GET" and call.method == "HEAD"):
            return None
        return error_reply(405, "METHOD", f"use {method}", [("Allow", method)])

    async def _list(self, call: Call) -> Reply:
        state = call.arg("state").upper()
        if state and state not in LIVE_STATES:
            return error_reply(400, "BAD_REQUEST",
                               f"state must be one of {', '.join(LIVE_STATES)}")
        q = call.arg("q").strip().lower()
        raw_limit = call.arg("limit") or "50"
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 500:
            return error_reply(400, "BAD_REQUEST", "limit must be 1-500")
        limit = int(raw_limit)
        cursor = call.arg("cursor") or None
        found: list[SessionRecord] = []
        store = self.node.store
        for _ in range(MAX_SCAN_BATCHES):
            records, cursor = await store.scan_sessions(cursor, self.scan_batch)
            found.extend(r for r in records if _matches(r, state, q))
            if cursor is None or len(found) >= limit:
                break
        # A page ends on a whole batch, so it may hold more than `limit`.
        found.sort(key=lambda r: r["created"], reverse=True)
        return json_reply(200, {"ok": True, "sessions": [admin_session(r) for r in found],
                                "next_cursor": cursor})

    async def _get(self, session_id: str) -> Reply:
        rec = await self.node.store.get_session(session_id)
        if rec is None:
            raise LobbyError(ErrorCode.SESSION_NOT_FOUND)
        return json_reply(200, {"ok": True, "session": admin_session(rec)})

    async def _close(self, call: Call, session_id: str) -> Reply:
        note = ""
        if call.body:
            try:
                body = json.loads(call.body)
            except ValueError:
                return error_reply(400, "BAD_REQUEST", "the body must be JSON")
            if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str):
                return error_reply(400, "BAD_REQUEST", 'the body is {"reason": TEXT}')
            note = body.get("reason", "")[:500]
        rec = await self.node.lobby.complete(session_id, CLOSED_BY_ADMIN)
        log.info("admin closed session %s: %s", session_id, note or "(no reason given)",
                 extra=fields(session=session_id, reason=CLOSED_BY_ADMIN))
        out = admin_session(rec)
        out["session_state"] = "ENDED"
        return json_reply(200, {"ok": True, "session": out, "note": note})

    async def _kick(self, session_id: str, player_id: str) -> Reply:
        rec = await self.node.store.get_session(session_id)
        if rec is None or all(m["id"] != player_id for m in rec["members"]):
            return error_reply(404, "NOT_FOUND", "no such player in that session")
        if rec["host"] == player_id:
            return error_reply(409, "STATE_CONFLICT",
                               "the host cannot be kicked: close the session instead")
        # The host's own kick: the same rules (WAITING rooms) and the same events.
        after = await self.node.store.kick(rec["host"], player_id, now_ms(),
                                           session_id=session_id)
        self.node.lobby.changed(after)
        log.info("admin kicked %s from session %s", player_id, session_id,
                 extra=fields(session=session_id, player=player_id, reason="kicked"))
        return json_reply(200, {"ok": True, "session": admin_session(after)})
