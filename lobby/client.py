"""A Python client of the lobby (asyncio, on websockets): bots, load tests, tools.

    from lobby.client import connect

    async with connect("ws://localhost:8080/ws", name="bot") as lobby:
        session = await lobby.create_session("Friday", 4)
        async for event in lobby:            # every protocol event since connect
            if event.type == "player_joined" and lobby.session.player_count == 2:
                await lobby.start_session()

One awaitable method per request, returning the reply's typed content (models of
`lobby.messages`); a refused request raises `RequestError` with the server's code.
Events arrive as models too, through `async for`, `next_event()`, or callbacks
(`on("player_joined", fn)`). `session` mirrors the player's session from replies
and events. When the socket drops (not by `close()`, not close code 4001), the
client reconnects with exponential backoff and jitter and resumes with its
`resume_token`; requests made meanwhile wait for it (within their timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

from pydantic import BaseModel, ConfigDict
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from lobby import messages as m

log = logging.getLogger("lobby.client")

CLOSE_REPLACED = 4001
# Client-made error codes (never sent by the server), as in the Godot addon.
TIMEOUT = "TIMEOUT"
DISCONNECTED = "DISCONNECTED"
NOT_CONNECTED = "NOT_CONNECTED"

Callback = Callable[[Any], Awaitable[None] | None]
FrameHook = Callable[[dict[str, Any], str], None]


class RequestError(Exception):
    """A request that did not succeed: the server's error code, or a client-made one."""

    def __init__(self, code: str, message: str, reply: dict[str, Any] | None = None) -> None:
        self.code = code
        self.message = message
        self.reply = reply or {}
        super().__init__(f"{code}: {message}")


class RequestTimeout(RequestError):
    pass


class NotConnected(RequestError):
    pass


class UnknownEvent(BaseModel):
    """An event type this client has no model for (a newer server): its raw fields."""

    model_config = ConfigDict(extra="allow")
    type: str
    session_id: str | None = None


class _Connect:
    """What `connect()` returns: await it, or use it as `async with`."""

    def __init__(self, client: LobbyClient) -> None:
        self._client = client

    def __await__(self) -> Generator[Any, None, LobbyClient]:
        return self._open().__await__()

    async def _open(self) -> LobbyClient:
        await self._client.start()
        return self._client

    async def __aenter__(self) -> LobbyClient:
        return await self._open()

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()


def connect(url: str, name: str | None = None, token: str | None = None, *,
            resume_token: str | None = None, timeout: float = 10.0, start_timeout: float = 40.0,
            reconnect: bool = True, max_reconnect_attempts: int = 12,
            reconnect_base_delay: float = 0.5, reconnect_max_delay: float = 15.0,
            on_frame: FrameHook | None = None) -> _Connect:
    """Connect to `url` (ws://HOST:PORT/ws) and say hello; `await` it or `async with` it.

    `resume_token` makes it the same player as before (a restarted bot); `on_frame` sees
    every decoded frame the server sends (tests validate them against the schema).
    `start_timeout` is how long start_session waits for its reply, which comes after
    the game server's claim (GameLift's claim limit can hold that back for up to 30 s).
    """
    return _Connect(LobbyClient(
        url, name=name, token=token, resume_token=resume_token, timeout=timeout,
        start_timeout=start_timeout,
        reconnect=reconnect, max_reconnect_attempts=max_reconnect_attempts,
        reconnect_base_delay=reconnect_base_delay, reconnect_max_delay=reconnect_max_delay,
        on_frame=on_frame))


class LobbyClient:
    def __init__(self, url: str, name: str | None = None, token: str | None = None, *,
                 resume_token: str | None = None, timeout: float = 10.0,
                 start_timeout: float = 40.0,
                 reconnect: bool = True, max_reconnect_attempts: int = 12,
                 reconnect_base_delay: float = 0.5, reconnect_max_delay: float = 15.0,
                 on_frame: FrameHook | None = None) -> None:
        self.url = url
        self.name = name
        self.token = token
        self.resume_token = resume_token
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.reconnect = reconnect
        self.max_reconnect_attempts = max_reconnect_attempts
        self.reconnect_base_delay = reconnect_base_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.on_frame = on_frame
        self.player_id: str | None = None
        #: The mirrored session (None when in none), updated before events are delivered.
        self.session: m.Session | None = None
        #: "connecting", "online", "reconnecting" or "closed".
        self.state = "connecting"
        self.reconnects = 0
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self._late: dict[int, str] = {}
        self._events: asyncio.Queue[BaseModel | None] = asyncio.Queue()
        self._callbacks: dict[str, list[Callback]] = {}
        self._online = asyncio.Event()
        self._closing = False
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.close_code: int | None = None

    # connection ------------------------------------------------------------------
    async def start(self) -> None:
        """Open the socket and say hello (raises when that fails)."""
        await self._open()
        try:
            await self._hello()
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> None:
        self._ws = await ws_connect(self.url, compression=None, open_timeout=self.timeout,
                                    max_size=None)
        self._reader = asyncio.get_running_loop().create_task(self._read(self._ws))

    async def _hello(self) -> m.HelloReply:
        fields: dict[str, Any] = {}
        if self.name is not None:
            fields["name"] = self.name
        if self.token is not None:
            fields["token"] = self.token
        if self.resume_token is not None:
            fields["resume_token"] = self.resume_token
        reply = m.HelloReply.model_validate(await self._send("hello", fields))
        self.player_id = reply.player_id
        self.name = reply.name
        self.resume_token = reply.resume_token
        had = self.session
        self.session = reply.session
        self.state = "online"
        self._online.set()
        if had is not None and reply.session is None:
            # Not resumed into it: it ended, or the seat was lost, while we were away.
            self._emit("session_lost", had)
        return reply

    async def close(self) -> None:
        """Close for good (no reconnect); pending requests fail with DISCONNECTED."""
        self._closing = True
        self.state = "closed"
        for task in list(self._tasks):
            task.cancel()  # a reconnect loop first: it must not open a new socket
        self._online.clear()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, self.timeout)
        self._fail_pending(DISCONNECTED, "the client closed the connection")
        self._events.put_nowait(None)

    def cut(self) -> None:
        """Drop the socket without a close handshake (tests: as if the link died)."""
        if self._ws is not None:
            self._ws.transport.abort()

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                msg = json.loads(raw)
                if self.on_frame is not None:
                    self.on_frame(msg, raw if isinstance(raw, str) else raw.decode())
                if "ok" in msg:
                    self._on_reply(msg)
                else:
                    self._on_event(msg)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("lobby client reader failed")
        finally:
            if ws is self._ws:
                self._lost(ws)

    def _lost(self, ws: ClientConnection) -> None:
        self._online.clear()
        self._fail_pending(DISCONNECTED, "the lobby connection dropped")
        code = ws.close_code
        self.close_code = code
        if self._closing or self.state == "reconnecting":
            return  # closed on purpose, or the reconnect loop is already at it
        if code == CLOSE_REPLACED or not self.reconnect or self.player_id is None:
            self.state = "closed"
            self._emit("disconnected", code)
            self._events.put_nowait(None)
            return
        self.state = "reconnecting"
        self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        for attempt in range(1, self.max_reconnect_attempts + 1):
            ceiling = min(self.reconnect_max_delay, self.reconnect_base_delay * 2 ** (attempt - 1))
            # Jitter: a restarted lobby is not met by every client at the same instant.
            delay = ceiling * random.uniform(0.5, 1.0)
            self._emit("reconnecting", attempt)
            await asyncio.sleep(delay)
            if self._closing:
                return
            try:
                await self._open()
                reply = await self._hello()
            except (OSError, WebSocketException, RequestError, TimeoutError):
                if self._ws is not None:
                    with contextlib.suppress(Exception):
                        await self._ws.close()
                continue
            self.reconnects += 1
            self._emit("reconnected", reply.resumed)
            return
        self.state = "closed"
        self._emit("disconnected", None)
        self._events.put_nowait(None)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # requests --------------------------------------------------------------------
    async def request(self, rtype: str, **fields: Any) -> dict[str, Any]:
        """Any request (also ones this client has no method for): the ok reply as a dict.

        While reconnecting it first waits for the connection, within the timeout.
        """
        if not self._online.is_set():
            if self.state == "closed":
                raise NotConnected(NOT_CONNECTED, "the client is closed")
            try:
                async with asyncio.timeout(self.timeout):
                    await self._online.wait()
            except TimeoutError:
                raise RequestTimeout(
                    TIMEOUT, f"not reconnected within {self.timeout} s for {rtype}") from None
        return await self._send(rtype, fields)

    async def _send(self, rtype: str, fields: dict[str, Any]) -> dict[str, Any]:
        ws = self._ws
        if ws is None:
            raise NotConnected(NOT_CONNECTED, "no open lobby connection")
        rid = next(self._ids)
        wait = self.start_timeout if rtype == "start_session" else self.timeout
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (rtype, fut)
        try:
            await ws.send(json.dumps({"type": rtype, "id": rid, **fields}))
            reply = await asyncio.wait_for(asyncio.shield(fut), wait)
        except TimeoutError:
            # A late reply still teaches the mirror what happened.
            self._late[rid] = rtype
            raise RequestTimeout(TIMEOUT, f"no reply to {rtype} within {wait} s") from None
        except ConnectionClosed:
            raise NotConnected(DISCONNECTED, "the lobby connection dropped") from None
        finally:
            self._pending.pop(rid, None)
        if reply.get("ok") is not True:
            error = reply.get("error") or {}
            cls = NotConnected if error.get("code") in (DISCONNECTED, NOT_CONNECTED) else (
                RequestError)
            raise cls(str(error.get("code")), str(error.get("message")), reply)
        return reply

    def _fail_pending(self, code: str, message: str) -> None:
        for rtype, fut in self._pending.values():
            if not fut.done():
                fut.set_result({"type": rtype, "ok": False,
                                "error": {"code": code, "message": message}})

    def _on_reply(self, msg: dict[str, Any]) -> None:
        rid = msg.get("id")
        entry = self._pending.get(rid) if isinstance(rid, int) else None
        if entry is not None:
            self._learn(entry[0], msg)
            if not entry[1].done():
                entry[1].set_result(msg)
        elif isinstance(rid, int) and rid in self._late:
            self._learn(self._late.pop(rid), msg)

    def _learn(self, rtype: str, msg: dict[str, Any]) -> None:
        """What a reply tells the mirror (before the awaiting caller resumes)."""
        if msg.get("ok") is not True:
            return
        if rtype == "leave_session":
            self.session = None
        elif isinstance(msg.get("session"), dict) and rtype != "hello":
            # create/join make it the mirrored session; any other reply's session
            # (start, update_session, ...) refreshes it when it is the same one.
            self._mirror(m.Session.model_validate(msg["session"]),
                         any_id=rtype in ("create_session", "join_session"))

    def _mirror(self, snapshot: m.Session, any_id: bool = False) -> None:
        cur = self.session
        if cur is not None and cur.session_id == snapshot.session_id:
            if snapshot.version < cur.version:
                return  # stale
        elif not any_id:
            return  # an event about a session we do not mirror
        self.session = snapshot

    # events ----------------------------------------------------------------------
    def _on_event(self, msg: dict[str, Any]) -> None:
        model = m.EVENTS.get(msg.get("type"))  # type: ignore[arg-type]
        event: BaseModel = (model or UnknownEvent).model_validate(msg)
        sid = msg.get("session_id")
        current = self.session is not None and self.session.session_id == sid
        etype = msg.get("type")
        if etype in ("session_closed", "kicked") and current:
            self.session = None
        elif etype == "player_left" and msg.get("player_id") == self.player_id and current:
            self.session = None
        elif isinstance(getattr(event, "session", None), m.Session):
            self._mirror(event.session, any_id=False)  # type: ignore[attr-defined]
        self._events.put_nowait(event)
        self._emit(str(etype), event)

    def on(self, event_type: str, callback: Callback) -> Callable[[], None]:
        """Call `callback(event)` for each event of that type ("*": every event). Also
        the client's own: "reconnecting" (attempt), "reconnected" (resumed),
        "session_lost" (the old session), "disconnected" (close code). Returns an
        unsubscribe function. An async callback runs as a task."""
        self._callbacks.setdefault(event_type, []).append(callback)
        return lambda: self._callbacks.get(event_type, []).remove(callback)

    def _emit(self, name: str, value: Any) -> None:
        targets = list(self._callbacks.get(name, ()))
        if name not in ("reconnecting", "reconnected", "session_lost", "disconnected"):
            targets += self._callbacks.get("*", ())
        for cb in targets:
            try:
                result = cb(value)
                if inspect.isawaitable(result):
                    self._spawn(result)
            except Exception:
                log.exception("lobby client callback for %s failed", name)

    def __aiter__(self) -> AsyncIterator[BaseModel]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[BaseModel]:
        while True:
            event = await self._events.get()
            if event is None:
                self._events.put_nowait(None)  # every iterator ends
                return
            yield event

    async def next_event(self, event_type: str | None = None,
                         timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """The next event (of that type: earlier ones of other types are passed over)."""
        async with asyncio.timeout(self.timeout if timeout is None else timeout):
            while True:
                event = await self._events.get()
                if event is None:
                    self._events.put_nowait(None)
                    raise NotConnected(NOT_CONNECTED, "the client is closed")
                if event_type is None or getattr(event, "type", None) == event_type:
                    return event

    # one method per request ------------------------------------------------------
    async def create_session(self, name: str | None = None, max_players: int | None = None,
                             password: str | None = None, *,
                             attributes: dict[str, Any] | None = None,
                             visibility: str | None = None) -> m.Session:
        reply = await self.request("create_session", **_given(
            name=name, max_players=max_players, password=password, attributes=attributes,
            visibility=visibility))
        return m.CreateSessionReply.model_validate(reply).session

    async def list_sessions(self, limit: int | None = None, cursor: str | None = None, *,
                            filter: dict[str, Any] | None = None,
                            min_free_seats: int | None = None,
                            has_password: bool | None = None, sort: str | None = None
                            ) -> m.ListSessionsReply:
        reply = await self.request("list_sessions", **_given(
            limit=limit, cursor=cursor, filter=filter, min_free_seats=min_free_seats,
            has_password=has_password, sort=sort))
        return m.ListSessionsReply.model_validate(reply)

    async def join_session(self, session_id: str | None = None, password: str | None = None,
                           *, join_code: str | None = None) -> m.Session:
        """By `session_id`, or by the `join_code` a member shared."""
        reply = await self.request("join_session", **_given(
            session_id=session_id, join_code=join_code, password=password))
        return m.JoinSessionReply.model_validate(reply).session

    async def update_session(self, *, name: str | None = None, max_players: int | None = None,
                             password: str | None = None,
                             attributes: dict[str, Any] | None = None,
                             visibility: str | None = None,
                             locked: bool | None = None) -> m.Session:
        """Host only: change what is given (password "" removes it; an attribute set to
        None is deleted)."""
        reply = await self.request("update_session", **_given(
            name=name, max_players=max_players, password=password, attributes=attributes,
            visibility=visibility, locked=locked))
        return m.UpdateSessionReply.model_validate(reply).session

    async def update_player(self, attributes: dict[str, Any]) -> None:
        await self.request("update_player", attributes=attributes)

    async def promote_player(self, player_id: str) -> None:
        await self.request("promote_player", player_id=player_id)

    async def leave_session(self) -> None:
        await self.request("leave_session")

    async def kick_player(self, player_id: str, *, ban: bool | None = None) -> None:
        await self.request("kick_player", **_given(player_id=player_id, ban=ban))

    async def set_ready(self, ready: bool = True) -> None:
        await self.request("set_ready", ready=ready)

    async def send_chat(self, text: str) -> None:
        await self.request("send_chat", text=text)

    async def chat_history(self, after_seq: int | None = None) -> list[m.ChatMessage]:
        reply = await self.request("chat_history", **_given(after_seq=after_seq))
        return m.ChatHistoryReply.model_validate(reply).messages

    async def start_session(self) -> m.Session:
        reply = await self.request("start_session")
        return m.StartSessionReply.model_validate(reply).session

    async def join_ticket(self) -> m.JoinTicketReply:
        return m.JoinTicketReply.model_validate(await self.request("join_ticket"))

    async def ping(self) -> None:
        await self.request("ping")


def _given(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}
