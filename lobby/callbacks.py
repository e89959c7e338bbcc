"""The game-server HTTP API, on the same port as the WebSocket.

A game server reports that its match runs, and that it is over, with the shared
server key. websockets' HTTP side reads no request bodies, so every call takes
its arguments in the path: `POST /v1/sessions/{session_id}/in-progress`,
`POST /v1/sessions/{session_id}/complete`, `GET /v1/sessions/{session_id}`, and
`GET /v1/servers/{server_id}/session` for a server that knows only its own id.
"""

from __future__ import annotations

import email.utils
import hmac
import json
import logging
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from lobby.errors import ErrorCode, LobbyError
from lobby.handlers import Lobby
from lobby.session import public_session
from lobby.store.redis import StateConflict

log = logging.getLogger("lobby.callbacks")

SESSIONS_PREFIX = "/v1/sessions/"
SERVERS_PREFIX = "/v1/servers/"
PREFIXES = (SESSIONS_PREFIX, SERVERS_PREFIX)  # what app.py routes here


def json_response(status: HTTPStatus, payload: dict[str, Any],
                  extra: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        *(extra or []),
    ])
    return Response(status.value, status.phrase, headers, body)


def _error(status: HTTPStatus, code: str, message: str,
           extra: list[tuple[str, str]] | None = None) -> Response:
    return json_response(status, {"ok": False, "error": {"code": code, "message": message}}, extra)


class GameServerAPI:
    def __init__(self, lobby: Lobby, server_key: str | None) -> None:
        self.lobby = lobby
        self._key = server_key.encode() if server_key else None

    def _authorize(self, request: Request) -> Response | None:
        if self._key is None:
            return _error(HTTPStatus.FORBIDDEN, "DISABLED",
                          "game-server callbacks are off: start the lobby with --server-key")
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return _error(HTTPStatus.UNAUTHORIZED, "UNAUTHORIZED",
                          "send the server key as 'Authorization: Bearer KEY'",
                          [("WWW-Authenticate", 'Bearer realm="lobby"')])
        if not hmac.compare_digest(given.strip().encode(), self._key):
            return _error(HTTPStatus.FORBIDDEN, "FORBIDDEN", "wrong server key")
        return None

    async def route(self, connection: ServerConnection, request: Request) -> Response:
        denied = self._authorize(request)
        if denied is not None:
            return denied
        path = request.path.split("?", 1)[0]
        method = getattr(request, "method", "GET")
        if path.startswith(SERVERS_PREFIX):
            return await self._server_session(path[len(SERVERS_PREFIX):].split("/"), method)
        parts = path[len(SESSIONS_PREFIX):].split("/")
        try:
            if len(parts) == 1 and parts[0]:
                if method != "GET":
                    return _error(HTTPStatus.METHOD_NOT_ALLOWED, "METHOD", "use GET")
                rec = await self.lobby.store.get_session(parts[0])
                if rec is None:
                    raise LobbyError(ErrorCode.SESSION_NOT_FOUND)
            elif len(parts) == 2 and parts[1] in ("in-progress", "complete"):
                if method != "POST":
                    return _error(HTTPStatus.METHOD_NOT_ALLOWED, "METHOD", "use POST")
                if parts[1] == "in-progress":
                    rec = await self.lobby.mark_in_progress(parts[0])
                else:
                    rec = await self.lobby.complete(parts[0], "completed")
                log.info("game server: session %s %s", parts[0], parts[1])
            else:
                return _error(HTTPStatus.NOT_FOUND, "NOT_FOUND", "no such game-server call")
        except StateConflict as err:
            return _error(HTTPStatus.CONFLICT, "STATE_CONFLICT", err.message)
        except LobbyError as err:
            status = (HTTPStatus.NOT_FOUND if err.code == ErrorCode.SESSION_NOT_FOUND
                      else HTTPStatus.BAD_REQUEST)
            return _error(status, err.code.value, err.message)
        ended = parts[-1] == "complete"
        session = public_session(rec)
        if ended:
            session["session_state"] = "ENDED"
        return json_response(HTTPStatus.OK, {"ok": True, "session": session})

    async def _server_session(self, parts: list[str], method: str) -> Response:
        """GET /v1/servers/{server_id}/session: the session this server serves."""
        if len(parts) != 2 or not parts[0] or parts[1] != "session":
            return _error(HTTPStatus.NOT_FOUND, "NOT_FOUND", "no such game-server call")
        if method != "GET":
            return _error(HTTPStatus.METHOD_NOT_ALLOWED, "METHOD", "use GET")
        rec = await self.lobby.store.get_session_by_server(parts[0])
        if rec is None:
            return _error(HTTPStatus.NOT_FOUND, ErrorCode.SESSION_NOT_FOUND.value,
                          "no live session uses this game server")
        return json_response(HTTPStatus.OK, {"ok": True, "session": public_session(rec)})
