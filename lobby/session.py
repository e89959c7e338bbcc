"""The session record as the stores keep it, and its public view.

Both stores hold a session as this plain dict (in Redis: one JSON string, so the
Lua scripts can decode, change and re-encode it atomically). The record carries
the password salt and hash; only `public_session()` leaves the server.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

SessionState = Literal["WAITING", "CONNECTING", "IN_PROGRESS"]
LIVE_STATES: tuple[str, ...] = ("WAITING", "CONNECTING", "IN_PROGRESS")


class Member(TypedDict):
    id: str  # player id
    name: str
    joined: int  # ms since the epoch; members are kept in join order
    # sha256 of the member's resume token: lets a Redis rebuilt from DynamoDB
    # accept the resume of players who were in the session.
    tokh: NotRequired[str]
    attrs: NotRequired[dict[str, Any]]  # the player's attributes (update_player)
    # Absent means false/connected, so records written before these existed read right.
    ready: NotRequired[bool]
    # Set while the member's socket is down: the seat-hold deadline in ms, or 0
    # when the seat is held for the session's life (a started session).
    off: NotRequired[int]


class PasswordHash(TypedDict):
    salt: str  # hex
    hash: str  # hex, hashlib.scrypt


class SessionRecord(TypedDict):
    id: str
    name: str
    host: str  # player id of the host
    state: SessionState
    max: int
    members: list[Member]  # never empty: the session is deleted with its last member
    pw: PasswordHash | None
    server_id: str | None
    endpoint: str | None
    seq: int  # creation sequence number: orders the open-sessions index, newest first
    v: int  # version, +1 on every change; orders events and DynamoDB writes
    started: NotRequired[int | None]  # ms since the epoch of WAITING -> CONNECTING
    created: int  # ms since the epoch
    updated: int  # ms since the epoch, last change
    active: int  # ms since the epoch, last player activity (idle timeout)
    # Lobby data (records persisted before it existed lack these: read with .get).
    attrs: NotRequired[dict[str, Any]]  # the game's description of the room
    vis: NotRequired[str]  # "public" or "unlisted" (never listed)
    locked: NotRequired[bool]  # no new joins, not listed
    code: NotRequired[str | None]  # join code, unique among live sessions
    bans: NotRequired[dict[str, bool]]  # player ids kicked with ban: refused for good
    # The search-index entries this session is in while listed (attribute tokens,
    # see search.attr_token); kept in the record so every script can update them.
    ix: NotRequired[dict[str, bool]]
    rule: NotRequired[str]  # start rule: "host" (absent) or "all_ready"
    minp: NotRequired[int]  # min_players to start; absent means 1


def public_session(
    rec: SessionRecord | dict[str, Any], member: bool = False
) -> dict[str, Any]:
    """The session object of the wire protocol (protocol.md, "Session object").

    `member`: whether it goes to one of the session's members, the only ones
    who may see its join code.
    """
    members = rec["members"]
    ids = [m["id"] for m in members]
    return {
        "session_id": rec["id"],
        "name": rec["name"],
        "host_id": rec["host"],
        "session_state": rec["state"],
        "player_count": len(ids),
        "max_players": rec["max"],
        "connected_players": ids,
        "players": [{"player_id": m["id"], "name": m["name"], "attributes": m.get("attrs") or {},
                     "ready": m.get("ready", False), "connected": "off" not in m}
                    for m in members],
        "has_password": rec["pw"] is not None,
        "server_id": rec["server_id"],
        "server_endpoint": rec["endpoint"],
        "created_at": rec["created"] / 1000,
        "version": rec["v"],
        "attributes": rec.get("attrs") or {},
        "visibility": rec.get("vis", "public"),
        "locked": bool(rec.get("locked", False)),
        "join_code": rec.get("code") if member else None,
        "start_rule": rec.get("rule", "host"),
        "min_players": rec.get("minp", 1),
    }


def bus_view(rec: SessionRecord | dict[str, Any]) -> dict[str, Any]:
    """What an event on the bus carries of the record (mirrors bus_view in
    prelude.lua): everything clients see, never a token or password hash."""
    out = {k: v for k, v in rec.items() if k not in ("ix", "bans")}
    if rec.get("pw") is not None:
        out["pw"] = {}
    out["members"] = [{k: v for k, v in m.items() if k != "tokh"} for m in rec["members"]]
    return out


def hold_until(member: Member | dict[str, Any]) -> float | None:
    """Unix seconds at which a dropped member's seat is given up, or None
    (connected, or held for the session's life)."""
    off = member.get("off")
    return off / 1000 if off else None
