"""The game-server HTTP API, on the same port as the WebSocket (protocol.md documents it).

A game server reports that its match runs, and that it is over, with the shared
server key: `POST /v1/sessions/{session_id}/in-progress`,
`POST /v1/sessions/{session_id}/complete`, `GET /v1/sessions/{session_id}`, and
`GET /v1/servers/{server_id}/session` for a server that knows only its own id.
Bodies are optional JSON objects (lobby.http reads them); ids stay in the path.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from lobby.errors import ErrorCode, LobbyError
from lobby.handlers import Lobby
from lobby.http import HttpError, HttpRequest, HttpResponse, Router, json_response
from lobby.session import public_session
from lobby.store.redis import StateConflict

log = logging.getLogger("lobby.callbacks")


def _view(rec: Any) -> dict[str, Any]:
    # Game servers hold the server key and serve the session: they see it as its
    # members do (join code included).
    return public_session(rec, member=True)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class GameServerAPI:
    def __init__(self, lobby: Lobby, server_key: str | None) -> None:
        self.lobby = lobby
        self._key = server_key.encode() if server_key else None

    def register(self, router: Router) -> None:
        router.add("GET", "/v1/sessions/{session_id}", self._guard(self._get_session))
        router.add("POST", "/v1/sessions/{session_id}/in-progress", self._guard(self._in_progress))
        router.add("POST", "/v1/sessions/{session_id}/complete", self._guard(self._complete))
        router.add("GET", "/v1/servers/{server_id}/session", self._guard(self._server_session))

    def _authorize(self, request: HttpRequest) -> None:
        if self._key is None:
            raise HttpError(HTTPStatus.FORBIDDEN, "DISABLED",
                            "game-server callbacks are off: start the lobby with --server-key")
        scheme, _, given = request.header("authorization").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise HttpError(HTTPStatus.UNAUTHORIZED, "UNAUTHORIZED",
                            "send the server key as 'Authorization: Bearer KEY'",
                            [("WWW-Authenticate", 'Bearer realm="lobby"')])
        if not hmac.compare_digest(given.strip().encode(), self._key):
            raise HttpError(HTTPStatus.FORBIDDEN, "FORBIDDEN", "wrong server key")

    def _guard(self, handler: Handler) -> Handler:
        """The key first, then the body (a JSON object, or none), then the call;
        store errors become their HTTP answers."""
        async def guarded(request: HttpRequest) -> HttpResponse:
            self._authorize(request)
            request.json_object()
            try:
                return await handler(request)
            except StateConflict as err:
                raise HttpError(HTTPStatus.CONFLICT, "STATE_CONFLICT", err.message) from None
            except LobbyError as err:
                status = (HTTPStatus.NOT_FOUND if err.code == ErrorCode.SESSION_NOT_FOUND
                          else HTTPStatus.BAD_REQUEST)
                raise HttpError(status, err.code.value, err.message) from None
        return guarded

    async def _get_session(self, request: HttpRequest) -> HttpResponse:
        rec = await self.lobby.store.get_session(request.params["session_id"])
        if rec is None:
            raise LobbyError(ErrorCode.SESSION_NOT_FOUND)
        return json_response(HTTPStatus.OK, {"ok": True, "session": _view(rec)})

    async def _in_progress(self, request: HttpRequest) -> HttpResponse:
        sid = request.params["session_id"]
        rec = await self.lobby.mark_in_progress(sid)
        log.info("game server: session %s in-progress", sid)
        return json_response(HTTPStatus.OK, {"ok": True, "session": _view(rec)})

    async def _complete(self, request: HttpRequest) -> HttpResponse:
        sid = request.params["session_id"]
        rec = await self.lobby.complete(sid, "completed")
        log.info("game server: session %s complete", sid)
        session = _view(rec)
        session["session_state"] = "ENDED"
        return json_response(HTTPStatus.OK, {"ok": True, "session": session})

    async def _server_session(self, request: HttpRequest) -> HttpResponse:
        """GET /v1/servers/{server_id}/session: the session this server serves."""
        rec = await self.lobby.store.get_session_by_server(request.params["server_id"])
        if rec is None:
            raise HttpError(HTTPStatus.NOT_FOUND, ErrorCode.SESSION_NOT_FOUND.value,
                            "no live session uses this game server")
        return json_response(HTTPStatus.OK, {"ok": True, "session": _view(rec)})
