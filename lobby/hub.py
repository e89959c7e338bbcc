"""A node's local fan-out: which of its sockets are in which session.

Events arrive from the bus as JSON text (one per store change, in version
order). Each is turned into its public wire form and encoded once, then pushed
to every local member of the session in one broadcast.

A player who is joining (or creating, or resuming) is registered *before* the
store call, as pending: the node is then subscribed before the change happens,
so nothing published after it can be missed. Events reaching a pending member
are queued, and released after its reply, skipping those its reply's snapshot
already contains (version <= the snapshot's). Chat messages carry no version
(they do not change the session): they are ordered by their own `seq` against
the chat log the reply carried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from lobby import fastjson
from lobby.bus import Bus
from lobby.protocol import encode
from lobby.session import public_session

log = logging.getLogger("lobby.hub")

CLOSE_REPLACED = 4001  # a newer socket resumed this player
SUBSCRIPTION_LINGER_SECONDS = 5.0


class Client(Protocol):
    """One player socket, as the socket layer presents it to the domain."""

    conn_id: str
    player_id: str | None
    session_id: str | None
    name: str  # set by hello, with token_hash: what a store rebuild needs
    token_hash: str
    password_failures: list[float]  # monotonic times of wrong passwords
    address: str  # the client's address: per-address limits shared by all nodes

    def push(self, text: str) -> None:
        """Queue a text frame without waiting (no backpressure)."""
        ...

    def writable(self) -> bool:
        """Whether pushes may still be queued (a peer that stopped reading is dropped)."""
        ...

    def close(self, code: int, reason: str) -> None: ...


PushMany = Callable[[Iterable[Client], str], None]


@dataclass(slots=True)
class _Member:
    client: Client
    min_version: int = 0
    # Queued (version, chat seq, text): one of the two numbers is 0.
    pending: list[tuple[int, int, str]] | None = field(default_factory=list)
    min_chat: int = 0
    # The newest player_left of this player heard while pending: whether it is
    # this membership's own (newer than the join) is known at activate.
    left_at: int = 0


class Hub:
    def __init__(self, bus: Bus, push_many: PushMany) -> None:
        self._bus = bus
        self._push_many = push_many
        self._sessions: dict[str, dict[str, _Member]] = {}
        self._clients: dict[str, Client] = {}  # conn id -> client, for node messages
        # Of those, the ones that are a player (hello done): kept by add/remove_client,
        # bind and replace, so that a heartbeat need not walk 10,000 sockets.
        self.player_count = 0
        # Sockets replaced before their own resume returned: conn id -> player id.
        self._replaced_early: dict[str, str] = {}
        self.events_in = 0
        self.frames_out = 0
        self.linger_seconds = SUBSCRIPTION_LINGER_SECONDS
        # Told (event type, the change's store time in ms) after each broadcast: metrics.
        self.on_fanout: Callable[[str, Any], None] | None = None
        self._lingering: dict[str, asyncio.TimerHandle] = {}

    # connections -------------------------------------------------------------
    def add_client(self, client: Client) -> None:
        self._clients[client.conn_id] = client
        if client.player_id is not None:
            self.player_count += 1

    def remove_client(self, client: Client) -> None:
        gone = self._clients.pop(client.conn_id, None)
        if gone is not None and gone.player_id is not None:
            self.player_count -= 1
        self._replaced_early.pop(client.conn_id, None)

    def bind(self, client: Client, player_id: str) -> bool:
        """Make the socket this player's, unless the store has meanwhile given the
        player to a newer socket (the `replaced` message beat the resume reply):
        then the socket is closed with 4001 and False returned. No await between
        the store's answer and this call, so no message can slip in between."""
        if client.player_id is None and self._clients.get(client.conn_id) is client:
            self.player_count += 1
        client.player_id = player_id
        if self._replaced_early.pop(client.conn_id, None) == player_id:
            self.replace(client)
            return False
        return True

    def drop(self, session_id: str, client: Client) -> None:
        """This socket is no longer in the session (the store says so)."""
        self._forget_client(session_id, client)

    def replace(self, client: Client) -> None:
        """A newer socket resumed this client's player: forget and close this one."""
        if client.session_id is not None:
            self._forget_client(client.session_id, client)
        if client.player_id is not None and self._clients.get(client.conn_id) is client:
            self.player_count -= 1
        client.player_id = None
        client.close(CLOSE_REPLACED, "replaced by a newer connection")

    def clients(self) -> list[Client]:
        return list(self._clients.values())

    @property
    def client_count(self) -> int:
        return len(self._clients)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    # membership --------------------------------------------------------------
    async def attach(self, session_id: str, client: Client) -> None:
        """Register a pending member and make sure this node is subscribed."""
        assert client.player_id is not None
        members = self._sessions.get(session_id)
        if members is None:
            members = self._sessions[session_id] = {}
            members[client.player_id] = _Member(client)
            lingering = self._lingering.pop(session_id, None)
            if lingering is not None:
                lingering.cancel()  # still subscribed: no round trip
            else:
                await self._bus.subscribe(session_id)
        else:
            members[client.player_id] = _Member(client)

    def activate(self, session_id: str, client: Client, version: int, chat_seq: int = 0
                 ) -> None:
        """The client has its reply with the snapshot at `version` (and the chat
        log up to `chat_seq`): release the rest."""
        member = self._member(session_id, client)
        if member is None:
            return
        client.session_id = session_id
        queued, member.pending, member.min_version = member.pending or [], None, version
        member.min_chat = chat_seq
        for v, seq, text in queued:
            if v > version if seq == 0 else seq > chat_seq:
                client.push(text)
        if member.left_at > version:  # it left (was kicked) after this join
            assert client.player_id is not None
            self._forget(session_id, client.player_id)

    def hold(self, session_id: str, client: Client) -> int | None:
        """Queue the events of an active member until `activate` (after a reply
        that must come first). Returns the version to activate with, or None if
        the client is no active member here."""
        member = self._member(session_id, client)
        if member is None or member.pending is not None:
            return None
        member.pending = []
        return member.min_version

    async def detach(self, session_id: str | None, client: Client) -> None:
        if session_id is None:
            return
        if client.session_id == session_id:
            client.session_id = None
        members = self._sessions.get(session_id)
        if members is None or client.player_id is None:
            return
        member = members.get(client.player_id)
        if member is not None and member.client is client:
            del members[client.player_id]
        if not members:
            del self._sessions[session_id]
            self._release(session_id)

    def _member(self, session_id: str, client: Client) -> _Member | None:
        members = self._sessions.get(session_id)
        if members is None or client.player_id is None:
            return None
        member = members.get(client.player_id)
        return member if member is not None and member.client is client else None

    def _forget(self, session_id: str, player_id: str) -> None:
        """Drop a member the store has already removed (no await: runs in delivery)."""
        members = self._sessions.get(session_id)
        if members is None:
            return
        member = members.pop(player_id, None)
        if member is not None and member.client.session_id == session_id:
            member.client.session_id = None
        if not members:
            del self._sessions[session_id]
            self._release(session_id)

    def _forget_client(self, session_id: str, client: Client) -> None:
        """Drop this socket's membership only: by the time a `replaced` message
        arrives, the player's entry may already be the newer socket's (a resume
        on this same node registers it before the message is delivered)."""
        if client.session_id == session_id:
            client.session_id = None
        members = self._sessions.get(session_id)
        if members is None or client.player_id is None:
            return
        member = members.get(client.player_id)
        if member is None or member.client is not client:
            return
        del members[client.player_id]
        if not members:
            del self._sessions[session_id]
            self._release(session_id)

    def _release(self, session_id: str) -> None:
        """The last local member is gone: unsubscribe, after a grace period.

        Players hop between rooms (join, leave, join again; browse from another
        node): keeping the subscription a few seconds saves a SUBSCRIBE and an
        UNSUBSCRIBE per hop and the wait for the confirmation on the next join.
        Events of a session without local members are dropped on arrival.
        """
        if self.linger_seconds <= 0:
            self._bus.unsubscribe(session_id)
            return
        handle = asyncio.get_running_loop().call_later(
            self.linger_seconds, self._expire, session_id)
        self._lingering[session_id] = handle

    def close(self) -> None:
        for handle in self._lingering.values():
            handle.cancel()
        self._lingering.clear()

    def _expire(self, session_id: str) -> None:
        self._lingering.pop(session_id, None)
        if session_id not in self._sessions:
            self._bus.unsubscribe(session_id)

    # delivery ----------------------------------------------------------------
    def on_message(self, raw: bytes | str) -> None:
        try:
            ev, view = split_event(raw)
            self._dispatch(ev, view)
        except Exception:
            log.exception("bad bus message dropped: %.200r", raw)

    def _dispatch(self, ev: dict[str, Any], view: str | None = None) -> None:
        self.events_in += 1
        kind = ev["e"]
        if kind == "replaced":
            client = self._clients.get(ev["conn"])
            if client is None:
                return
            if client.player_id == ev["player_id"]:
                self.replace(client)
            elif client.player_id is None:
                # Still in its own resume (the store has answered another node
                # first, or its reply is not back yet): bind() acts on it.
                self._replaced_early[client.conn_id] = ev["player_id"]
            return
        sid = ev["sid"]
        members = self._sessions.get(sid)
        if not members:
            return
        if kind == "session_deleted":
            for pid in list(members):
                self._forget(sid, pid)
            return
        if kind == "chat_message":
            self._chat(members, sid, ev["m"])
            return
        if kind == "session_closed":
            view = None  # the session is gone: no snapshot to mirror
        elif view is None and ev.get("s") is not None:
            # An event of the release before the view: built here, from its record.
            view = encode(public_session(ev["s"], member=True))  # events go to members only
        out, exclude = _public_event(ev)
        version = ev["v"]
        gone = None
        if kind == "player_left":
            gone = members.get(ev["player_id"])
            if gone is not None and gone.pending is None and version <= gone.min_version:
                # It left before the join this membership is for (a hop: the leave's
                # reply, then the join, came before this event): not this one's.
                gone = None
            if gone is not None and ev["reason"] == "kicked":
                # With the room as it is without them.
                kicked = _with_session({"type": "kicked", "session_id": sid}, view)
                if gone.pending is not None:
                    gone.pending.append((version, 0, kicked))
                else:
                    gone.client.push(kicked)
                    self.frames_out += 1
            if gone is not None and gone.pending is not None:
                # Whether it is this membership's leave is known at activate.
                gone.left_at = max(gone.left_at, version)
                gone = None
        text = _with_session(out, view)
        ready = []
        for pid, member in members.items():
            if pid == exclude:
                continue
            if member.pending is not None:
                member.pending.append((version, 0, text))
            elif version > member.min_version:
                ready.append(member.client)
        if ready:
            self._push_many(ready, text)
            self.frames_out += len(ready)
            changed = ev.get("u") or (ev.get("s") or {}).get("updated")
            if self.on_fanout is not None and changed is not None:
                self.on_fanout(kind, changed)
        if gone is not None:
            self._forget(sid, ev["player_id"])
        elif kind == "session_closed":
            for pid in list(members):
                self._forget(sid, pid)

    def _chat(self, members: dict[str, _Member], sid: str, msg: dict[str, Any]) -> None:
        """A chat message: one encode for all local members, the sender included."""
        text = encode({"type": "chat_message", "session_id": sid, **msg})
        seq = msg["seq"]
        ready = []
        for member in members.values():
            if member.pending is not None:
                member.pending.append((0, seq, text))
            elif seq > member.min_chat:
                ready.append(member.client)
        if ready:
            self._push_many(ready, text)
            self.frames_out += len(ready)


def split_event(raw: bytes | str) -> tuple[dict[str, Any], str | None]:
    """A bus message: its fields, and the members' view of the session when the
    store sent one. A session event (publish() in prelude.lua has the layout) is
    decoded only up to the record; the view is cut off the end, to be forwarded
    as it is. Anything else, or an event of a node without the view, is decoded
    whole."""
    if isinstance(raw, str):
        cut, close, mark = raw.find(',"s":'), "}", ',"p":'
    else:
        cut, close, mark = raw.find(b',"s":'), b"}", b',"p":'  # type: ignore[assignment]
    if cut > 0:
        try:
            head = fastjson.loads(raw[:cut] + close)  # type: ignore[operator]
        except ValueError:
            head = None
        size = head.get("pl") if isinstance(head, dict) else None
        start = len(raw) - 1 - size if type(size) is int else -1
        if start > cut and raw[start - 5:start] == mark:
            view = raw[start:-1]
            return head, view if isinstance(view, str) else view.decode()  # type: ignore[return-value]
    return fastjson.loads(raw), None


def _with_session(msg: dict[str, Any], view: str | None) -> str:
    """`msg` as wire text, with `view` (the members' view of the session, as
    text) as its `session`, if there is one."""
    if view is None:
        return encode(msg)
    return encode(msg)[:-1] + ',"session":' + view + "}"


def _public_event(ev: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The wire event for a bus event, without its session (_with_session adds it),
    and the player it must not be sent to."""
    kind = ev["e"]
    sid = ev["sid"]
    out: dict[str, Any] = {"type": kind, "session_id": sid}
    exclude = None
    if kind == "player_joined":
        out.update(player_id=ev["player_id"], name=ev["name"])
        exclude = ev["player_id"]  # the joiner learns from its reply
    elif kind == "player_left":
        out.update(player_id=ev["player_id"], reason=ev["reason"])
        exclude = ev["player_id"]  # the leaver has its reply, the kicked its `kicked`
    elif kind == "host_changed":
        out["host_id"] = ev["host_id"]
    elif kind == "session_started":
        out.update(server_id=ev["server_id"], server_endpoint=ev["server_endpoint"])
    elif kind == "session_start_failed":
        out["error"] = ev["error"]
    elif kind == "player_ready":
        out.update(player_id=ev["player_id"], ready=ev["ready"])
    elif kind == "player_disconnected":
        out.update(player_id=ev["player_id"], hold_until=ev["hold_until"])
    elif kind in ("player_reconnected", "player_updated"):
        out["player_id"] = ev["player_id"]
    elif kind == "session_closed":
        out["reason"] = ev["reason"]
    return out, exclude
