"""The game-server HTTP API, on the same port as the WebSocket (protocol.md documents it).

A game server's whole life goes through here, with the shared server key, so a
game server needs no AWS SDK: `POST /v1/servers/register` (RegisterGameServer),
`POST /v1/servers/{server_id}/heartbeat` (HealthCheck, answers with the session
to host), `POST /v1/sessions/{session_id}/in-progress`,
`POST /v1/sessions/{session_id}/complete` (deregisters the server),
`POST /v1/servers/{server_id}/deregister`, and the lookups
`GET /v1/sessions/{session_id}` and `GET /v1/servers/{server_id}/session`.
Bodies are optional JSON objects (lobby.http reads them); ids stay in the path.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from lobby.allocators.base import (
    AllocatorUnavailable,
    ServerBusy,
    ServerNotRegistered,
)
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

# FleetIQ's own limits (botocore's gamelift model), checked here so a game server
# gets a 400 naming the field rather than a failed AWS call.
_SERVER_ID_RE = re.compile(r"[a-zA-Z0-9\-.]{3,128}")
_INSTANCE_ID_RE = re.compile(r"i-[0-9a-zA-Z]{17}")
MAX_CONNECTION_INFO = 512
MAX_GAME_SERVER_DATA = 1024


def _field(body: dict[str, Any], name: str, *, required: bool, max_len: int,
           pattern: re.Pattern[str] | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise HttpError(HTTPStatus.BAD_REQUEST, "BAD_REQUEST", f"{name} is required")
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise HttpError(HTTPStatus.BAD_REQUEST, "BAD_REQUEST",
                        f"{name} must be a non-blank string of at most {max_len} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise HttpError(HTTPStatus.BAD_REQUEST, "BAD_REQUEST",
                        f"{name} must match {pattern.pattern}")
    return value


class GameServerAPI:
    def __init__(self, lobby: Lobby, server_key: str | None) -> None:
        self.lobby = lobby
        self._key = server_key.encode() if server_key else None

    def register(self, router: Router) -> None:
        router.add("GET", "/v1/sessions/{session_id}", self._guard(self._get_session))
        router.add("POST", "/v1/sessions/{session_id}/in-progress", self._guard(self._in_progress))
        router.add("POST", "/v1/sessions/{session_id}/complete", self._guard(self._complete))
        router.add("GET", "/v1/servers/{server_id}/session", self._guard(self._server_session))
        router.add("POST", "/v1/servers/register", self._guard(self._register))
        router.add("POST", "/v1/servers/{server_id}/heartbeat", self._guard(self._heartbeat))
        router.add("POST", "/v1/servers/{server_id}/deregister", self._guard(self._deregister))

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
            except ServerBusy as err:
                raise HttpError(HTTPStatus.CONFLICT, "STATE_CONFLICT", str(err)) from None
            except ServerNotRegistered:
                raise HttpError(HTTPStatus.NOT_FOUND, "SERVER_NOT_REGISTERED",
                                "this game server is not registered (any more): "
                                "POST /v1/servers/register when it is ready") from None
            except AllocatorUnavailable as err:
                log.warning("game-server call %s failed: %s", request.path, err)
                raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "UNAVAILABLE",
                                "FleetIQ could not be reached; try again") from None
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

    async def _register(self, request: HttpRequest) -> HttpResponse:
        body = request.json_object()
        server_id = _field(body, "server_id", required=True, max_len=128,
                           pattern=_SERVER_ID_RE)
        instance_id = _field(body, "instance_id", required=False, max_len=19,
                             pattern=_INSTANCE_ID_RE)
        connection_info = _field(body, "connection_info", required=True,
                                 max_len=MAX_CONNECTION_INFO)
        data = _field(body, "data", required=False, max_len=MAX_GAME_SERVER_DATA)
        assert server_id is not None and connection_info is not None
        try:
            server = await self.lobby.servers.register_server(
                server_id, instance_id, connection_info, data, self.lobby.session_holder)
        except ValueError as err:
            raise HttpError(HTTPStatus.BAD_REQUEST, "BAD_REQUEST", str(err)) from None
        log.info("game server %s registered (%s)", server_id, connection_info)
        return json_response(HTTPStatus.OK, {"ok": True, "server": server})

    async def _heartbeat(self, request: HttpRequest) -> HttpResponse:
        server_id = request.params["server_id"]
        await self.lobby.servers.heartbeat(server_id)
        rec = await self.lobby.store.get_session_by_server(server_id)
        return json_response(HTTPStatus.OK, {
            "ok": True, "server_id": server_id,
            "session": _view(rec) if rec is not None else None})

    async def _deregister(self, request: HttpRequest) -> HttpResponse:
        server_id = request.params["server_id"]
        await self.lobby.servers.deregister_server(server_id)
        log.info("game server %s deregistered itself", server_id)
        return json_response(HTTPStatus.OK, {"ok": True, "server_id": server_id})
