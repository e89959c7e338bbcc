"""The in-process session store of embedded mode (one node, no Redis).

It mirrors the Lua scripts of `redis.py` rule for rule; the conformance suite
holds both to the same behaviour. Each method runs without awaiting in the
middle, so on one event loop every change is atomic, as a script is in Redis.
Records are kept as JSON text, exactly as Redis holds them, so no caller can
alias a stored record and events are the same bytes a Redis node would receive.
"""

from __future__ import annotations

import bisect
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from lobby import fastjson
from lobby.errors import ErrorCode, LobbyError
from lobby.protocol import new_join_codes
from lobby.session import PasswordHash, SessionRecord, public_session
from lobby.store.base import (
    CHAT_KEEP,
    CHAT_RATE,
    CHAT_WINDOW_MS,
    AddressOp,
    Change,
    GuessLimits,
    GuessVerdict,
    LiveClient,
    PasswordRequired,
    PlayerInfo,
    RestoreLease,
    ResumeResult,
    SweepResult,
    Timeouts,
    Verdict,
)
from lobby.store.redis import raise_script_error
from lobby.store.search import (
    PLAYER_SORTS,
    SCAN_BUDGET,
    SNAPSHOT_MAX,
    SNAPSHOT_MS,
    attr_token,
    cursor_position,
    holds,
    index_tokens,
    is_driver,
    merge_attrs,
)

PLAYERS_SCALE = 10**12  # mirrors prelude.lua: openp's score is count * scale + seq

Publish = Callable[[str, str], None]  # (channel, message): channel is a session id or "node:ID"


def _dump(obj: Any) -> str:
    # Records are kept as text (every read is a copy, as from Redis): orjson, since
    # this is most of a start's or a join's own CPU in embedded mode.
    return fastjson.dumps(obj)


class MemoryStore:
    def __init__(self, publish: Publish) -> None:
        self._publish = publish
        self._sessions: dict[str, str] = {}
        self._players: dict[str, dict[str, Any]] = {}
        self._player_expiry: dict[str, int] = {}  # session-less disconnected players
        self._holds: dict[str, int] = {}  # player id -> deadline ms
        self._open: list[tuple[int, str]] = []  # (seq, session id), ascending
        self._deadlines: dict[str, int] = {}  # session id -> time of last state change
        self._servers: dict[str, str] = {}  # game server id -> session id (SERVERS in Lua)
        self._codes: dict[str, str] = {}  # join code -> session id (CODES in Lua)
        # Search indexes of the listed sessions (OPENP and ix:<token> in Lua).
        self._openp: list[tuple[int, str]] = []  # (count * scale + seq, session id)
        self._openp_score: dict[str, int] = {}
        self._ix: dict[str, dict[str, int]] = {}  # token -> {session id: seq}
        # most_players / fewest_players orders: token -> (expiry ms, session ids)
        self._snapshots: dict[str, tuple[float, list[str]]] = {}
        # Node liveness, as NODES, DEAD and ckey() in prelude.lua.
        self._nodes: dict[str, int] = {}  # node id -> heartbeat deadline ms
        self._dead: dict[str, None] = {}
        self._conns: dict[str, dict[str, None]] = {}  # node id -> ids of players on it
        self._seq = 0
        # Chat beside the records, as chatkey()/chatmetakey() in prelude.lua: the
        # kept messages' JSON texts, the counter, and each sender's send times.
        self._chat: dict[str, deque[str]] = {}
        self._chat_seq: dict[str, int] = {}
        self._chat_sent: dict[str, dict[str, list[int]]] = {}
        # password_guess.lua's keys: bucket key -> {w, n, u, lv, exp}; session id ->
        # {address: expiry} of the addresses that guessed on it.
        self._guess_buckets: dict[str, dict[str, int]] = {}
        self._guessed: dict[str, tuple[int, set[str]]] = {}
        # The address_*.lua keys: address -> {incarnation: sockets}; incarnation ->
        # its addresses; incarnation -> the time its heartbeat lapses.
        self._addr_counts: dict[str, dict[str, int]] = {}
        self._addr_of: dict[str, set[str]] = {}
        self._addr_beats: dict[str, int] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # helpers mirroring prelude.lua ------------------------------------------
    def _load(self, sid: str | None) -> dict[str, Any] | None:
        raw = self._sessions.get(sid) if sid else None
        return fastjson.loads(raw) if raw else None

    def _save(self, s: dict[str, Any]) -> str:
        """Store the record; the text is reused for the event and the caller's copy
        (JSON was a third of the embedded node's CPU when each re-encoded it)."""
        text = self._sessions[s["id"]] = _dump(s)
        return text

    def _player(self, pid: str, now: int) -> dict[str, Any] | None:
        expiry = self._player_expiry.get(pid)
        if expiry is not None and expiry <= now:
            self._drop_player(pid)
        return self._players.get(pid)

    def _set_conn(self, p: dict[str, Any], conn: str) -> None:
        """Mirrors set_conn() in prelude.lua."""
        was = p.get("conn")
        if was and "." in was:
            on = self._conns.get(was.rsplit(".", 1)[0])
            if on is not None:
                on.pop(p["id"], None)
        p["conn"] = conn
        if conn and "." in conn:
            self._conns.setdefault(conn.rsplit(".", 1)[0], {})[p["id"]] = None

    def _drop_conn(self, p: dict[str, Any], now: int, hold_ms: int) -> SessionRecord | None:
        """Mirrors drop_conn() in prelude.lua."""
        self._set_conn(p, "")
        p["disc"] = now
        player_id = p["id"]
        if p.get("sid"):
            s = self._load(p["sid"])
            m = self._find(s, player_id)
            if s is None or m is None:
                return None
            # Seats in a started session are held for the session's life: no deadline (0).
            off = 0
            if s["state"] == "WAITING":
                off = now + hold_ms
                self._holds[player_id] = off
            m["off"] = off
            self._touch(s, now)
            saved = self._save(s)
            self._event(s, {"e": "player_disconnected", "player_id": player_id,
                            "hold_until": off / 1000 if off else None}, saved)
            return fastjson.loads(saved)  # type: ignore[no-any-return]
        self._player_expiry[player_id] = now + max(hold_ms, 1)
        return None

    def _drop_player(self, pid: str) -> None:
        self._players.pop(pid, None)
        self._player_expiry.pop(pid, None)

    def _event(self, s: dict[str, Any], ev: dict[str, Any], saved: str | None = None) -> None:
        """Publish an event carrying the record and the members' view of it, as
        publish() in prelude.lua lays it out; `saved` is the record's just-saved text."""
        view = _dump(public_session(s, member=True))
        ev.update(sid=s["id"], v=s["v"], u=s["updated"], pl=len(view))
        self._publish(s["id"], _dump(ev)[:-1] + ',"s":' + (saved or _dump(s))
                      + ',"p":' + view + "}")

    @staticmethod
    def _listed(s: dict[str, Any]) -> bool:
        """Mirrors listed() in prelude.lua."""
        return (s["state"] == "WAITING" and len(s["members"]) < s["max"]
                and s.get("vis") != "unlisted" and s.get("locked") is not True)

    @staticmethod
    def _sorted_remove(index: list[tuple[int, str]], entry: tuple[int, str]) -> None:
        i = bisect.bisect_left(index, entry)
        if i < len(index) and index[i] == entry:
            del index[i]

    def _unindex(self, s: dict[str, Any]) -> None:
        sid = s["id"]
        self._sorted_remove(self._open, (s["seq"], sid))
        old = self._openp_score.pop(sid, None)
        if old is not None:
            self._sorted_remove(self._openp, (old, sid))
        for token in s.get("ix") or {}:
            entries = self._ix.get(token)
            if entries is not None:
                entries.pop(sid, None)
                if not entries:
                    del self._ix[token]

    def _index_open(self, s: dict[str, Any]) -> None:
        """Mirrors index_open() in prelude.lua."""
        if not self._listed(s):
            self._unindex(s)
            return
        sid = s["id"]
        entry = (s["seq"], sid)
        i = bisect.bisect_left(self._open, entry)
        if not (i < len(self._open) and self._open[i] == entry):
            self._open.insert(i, entry)
        score = len(s["members"]) * PLAYERS_SCALE + s["seq"]
        old = self._openp_score.get(sid)
        if old != score:
            if old is not None:
                self._sorted_remove(self._openp, (old, sid))
            bisect.insort(self._openp, (score, sid))
            self._openp_score[sid] = score
        for token in s.get("ix") or {}:
            self._ix.setdefault(token, {})[sid] = s["seq"]

    def _reindex(self, s: dict[str, Any], indexed: tuple[str, ...] | None) -> None:
        """Mirrors reindex() in prelude.lua."""
        self._unindex(s)
        s["ix"] = index_tokens(s["attrs"], indexed)
        self._index_open(s)

    def _change_state(self, s: dict[str, Any], state: str, now: int) -> None:
        """Mirrors change_state() in prelude.lua."""
        s["state"] = state
        self._touch(s, now)
        s["active"] = now
        self._deadlines[s["id"]] = now
        self._index_open(s)

    @staticmethod
    def _touch(s: dict[str, Any], now: int) -> None:
        s["v"] += 1
        s["updated"] = now

    def _delete(self, s: dict[str, Any]) -> None:
        self._sessions.pop(s["id"], None)
        self._chat.pop(s["id"], None)
        self._chat_seq.pop(s["id"], None)
        self._chat_sent.pop(s["id"], None)
        self._deadlines.pop(s["id"], None)
        server_id = s.get("server_id")
        # Only our own entry: the server may already serve a later session.
        if server_id is not None and self._servers.get(server_id) == s["id"]:
            del self._servers[server_id]
        self._unindex(s)
        code = s.get("code")
        if code is not None and self._codes.get(code) == s["id"]:
            del self._codes[code]

    def _remove_member(
        self, s: dict[str, Any], pid: str, reason: str, now: int
    ) -> tuple[dict[str, Any], bool]:
        ids = [m["id"] for m in s["members"]]
        if pid not in ids:
            return s, False
        del s["members"][ids.index(pid)]
        self._holds.pop(pid, None)
        if not s["members"]:
            self._touch(s, now)
            self._delete(s)
            self._publish(s["id"], _dump(
                {"e": "session_deleted", "sid": s["id"], "v": s["v"], "reason": reason}
            ))
            return s, True
        self._touch(s, now)
        s["active"] = now
        host_changed = s["host"] == pid
        if host_changed:
            s["host"] = s["members"][0]["id"]
        self._index_open(s)
        saved = self._save(s)
        self._event(s, {"e": "player_left", "player_id": pid, "reason": reason}, saved)
        if host_changed:
            self._event(s, {"e": "host_changed", "host_id": s["host"]}, saved)
        return s, False

    def _close(self, s: dict[str, Any], reason: str, now: int) -> dict[str, Any]:
        for m in s["members"]:
            self._holds.pop(m["id"], None)
            p = self._players.get(m["id"])
            if p is not None and p.get("sid") == s["id"]:
                if p["conn"] == "":
                    self._drop_player(m["id"])
                else:
                    p.pop("sid", None)
        self._touch(s, now)
        self._delete(s)
        self._event(s, {"e": "session_closed", "reason": reason})
        return s

    def _copy(self, s: dict[str, Any] | None) -> SessionRecord | None:
        return fastjson.loads(_dump(s)) if s is not None else None

    def _require(self, pid: str, now: int) -> dict[str, Any]:
        p = self._player(pid, now)
        if p is None:
            raise LobbyError(ErrorCode.NOT_AUTHENTICATED)
        return p

    def _hosted_waiting_session(self, pid: str, now: int) -> dict[str, Any]:
        """Mirrors hosted_waiting_session() in prelude.lua."""
        p = self._require(pid, now)
        s = self._load(p.get("sid"))
        if s is None:
            raise LobbyError(ErrorCode.NOT_IN_SESSION)
        if s["host"] != pid:
            raise_script_error("NOT_HOST")
        if s["state"] != "WAITING":
            raise_script_error("SESSION_NOT_WAITING")
        return s

    def _hosted_session(self, pid: str, now: int) -> dict[str, Any]:
        """Mirrors hosted_session() in prelude.lua."""
        p = self._require(pid, now)
        s = self._load(p.get("sid"))
        if s is None:
            raise LobbyError(ErrorCode.NOT_IN_SESSION)
        if s["host"] != pid:
            raise_script_error("NOT_HOST")
        return s

    def _existing(self, session_id: str) -> dict[str, Any]:
        s = self._load(session_id)
        if s is None:
            raise_script_error("SESSION_NOT_FOUND")
        assert s is not None
        return s

    # players -----------------------------------------------------------------
    async def new_player(
        self, player_id: str, name: str, token_hash: str, conn: str, now: int
    ) -> PlayerInfo:
        p = self._players[player_id] = {"id": player_id, "name": name, "tokh": token_hash,
                                        "conn": ""}
        self._set_conn(p, conn)
        return PlayerInfo(player_id, name, None)

    async def resume(
        self, player_id: str, token_hash: str, conn: str, now: int
    ) -> ResumeResult | None:
        p = self._player(player_id, now)
        if p is None or p["tokh"] != token_hash:
            return None
        old = p["conn"]
        self._set_conn(p, conn)
        p.pop("disc", None)
        self._holds.pop(player_id, None)
        self._player_expiry.pop(player_id, None)
        if old and old != conn and "." in old:
            self._publish(
                "node:" + old.rsplit(".", 1)[0],
                _dump({"e": "replaced", "player_id": player_id, "conn": old}),
            )
        s = self._load(p.get("sid"))
        m = self._find(s, player_id)
        back = m is not None and "off" in m
        if back:
            assert s is not None and m is not None
            # The seat was held: the others learn that its player is back.
            del m["off"]
            self._touch(s, now)
            self._event(s, {"e": "player_reconnected", "player_id": player_id}, self._save(s))
        session = self._copy(s)
        return ResumeResult(PlayerInfo(p["id"], p["name"], p.get("sid")), session, back)

    @staticmethod
    def _find(s: dict[str, Any] | None, pid: str) -> dict[str, Any] | None:
        if s is None:
            return None
        for m in s["members"]:
            if m["id"] == pid:
                return m  # type: ignore[no-any-return]
        return None

    async def claim(
        self, player_id: str, name: str, token_hash: str, conn: str, now: int
    ) -> tuple[ResumeResult, bool]:
        """claim.lua: a new player at once, else a new token hash and then resume."""
        p = self._player(player_id, now)
        if p is None:
            self._players[player_id] = {"id": player_id, "name": name, "tokh": token_hash,
                                        "conn": conn}
            return ResumeResult(PlayerInfo(player_id, name, None), None), True
        p["tokh"] = token_hash
        res = await self.resume(player_id, token_hash, conn, now)  # never suspends
        assert res is not None
        return res, False

    async def disconnect(
        self, player_id: str, conn: str, now: int, hold_ms: int
    ) -> SessionRecord | None:
        p = self._player(player_id, now)
        if p is None or p["conn"] != conn:
            return None
        return self._drop_conn(p, now, hold_ms)

    # sessions ----------------------------------------------------------------
    async def create_session(
        self, player_id: str, session_id: str, name: str, max_players: int,
        pw: PasswordHash | None, now: int, *, attributes: dict[str, Any] | None = None,
        visibility: str = "public", codes: list[str] | None = None,
        indexed: tuple[str, ...] | None = None, start_rule: str = "host", min_players: int = 1,
    ) -> SessionRecord:
        p = self._require(player_id, now)
        if p.get("sid"):
            raise_script_error("ALREADY_IN_SESSION")
        if session_id in self._sessions:
            raise_script_error("INTERNAL")
        code = next((c for c in codes or new_join_codes() if c not in self._codes), None)
        if code is None:
            raise_script_error("INTERNAL")
        assert code is not None
        self._seq += 1
        s = {
            "id": session_id, "name": name or f"{p['name']}'s game",
            "host": player_id, "state": "WAITING",
            "max": max_players, "members": [{"id": player_id, "name": p["name"], "joined": now}],
            "pw": dict(pw) if pw else None, "server_id": None, "endpoint": None,
            "seq": self._seq, "v": 1, "started": None,
            "created": now, "updated": now, "active": now,
            "attrs": dict(attributes or {}), "vis": visibility, "locked": False, "code": code,
            "bans": {}, "ix": {},
        }
        s["members"][0]["tokh"] = p["tokh"]
        s["members"][0]["attrs"] = {}
        self._codes[code] = session_id
        self._reindex(s, indexed)
        # Defaults are left out of the record, as in records written before they existed.
        if start_rule != "host":
            s["rule"] = start_rule
        if min_players > 1:
            s["minp"] = min_players
        saved = self._save(s)
        self._deadlines[session_id] = now
        p["sid"] = session_id
        return fastjson.loads(saved)  # type: ignore[no-any-return]

    async def join_session(
        self, player_id: str, session_id: str, verified_pw: PasswordHash | None, now: int
    ) -> SessionRecord:
        p = self._require(player_id, now)
        if p.get("sid"):
            raise_script_error("ALREADY_IN_SESSION")
        s = self._load(session_id)
        if s is None:
            raise_script_error("SESSION_NOT_FOUND")
        assert s is not None
        if player_id in (s.get("bans") or {}):
            raise_script_error("BANNED")
        if s["state"] != "WAITING":
            raise_script_error("SESSION_NOT_WAITING")
        if s.get("locked") is True:
            raise_script_error("SESSION_LOCKED")
        if len(s["members"]) >= s["max"]:
            raise_script_error("SESSION_FULL")
        if s["pw"] is not None and (
            verified_pw is None
            or verified_pw["hash"] != s["pw"]["hash"]
            or verified_pw["salt"] != s["pw"]["salt"]
        ):
            raise PasswordRequired(s["pw"])
        s["members"].append(
            {"id": player_id, "name": p["name"], "joined": now, "tokh": p["tokh"], "attrs": {}}
        )
        self._touch(s, now)
        s["active"] = now
        self._index_open(s)
        saved = self._save(s)
        p["sid"] = session_id
        self._event(s, {"e": "player_joined", "player_id": player_id, "name": p["name"]}, saved)
        return fastjson.loads(saved)  # type: ignore[no-any-return]

    async def join_session_chat(
        self, player_id: str, session_id: str, verified_pw: PasswordHash | None, now: int
    ) -> tuple[SessionRecord, list[dict[str, Any]]]:
        rec = await self.join_session(player_id, session_id, verified_pw, now)
        return rec, [fastjson.loads(t) for t in self._chat.get(session_id, ())]

    async def leave_session(self, player_id: str, now: int, *,
                            session_id: str | None = None) -> Change:
        p = self._require(player_id, now)
        if not p.get("sid"):
            raise_script_error("NOT_IN_SESSION")
        s = self._load(p.pop("sid"))
        if s is None:
            raise_script_error("NOT_IN_SESSION")
        assert s is not None
        after, ended = self._remove_member(s, player_id, "left", now)
        return Change(s["id"], self._copy(after), "abandoned" if ended else None)  # type: ignore[arg-type]

    async def kick(
        self, host_id: str, target_id: str, now: int, *, ban: bool = False,
        session_id: str | None = None,
    ) -> SessionRecord:
        s = self._hosted_waiting_session(host_id, now)
        if target_id == host_id:
            raise_script_error("BAD_REQUEST")
        if target_id not in [m["id"] for m in s["members"]]:
            raise_script_error("PLAYER_NOT_IN_SESSION", target_id)
        if ban:
            s.setdefault("bans", {})[target_id] = True
        after, _ = self._remove_member(s, target_id, "kicked", now)  # the host stays
        tp = self._player(target_id, now)
        if tp is not None:
            if tp["conn"] == "":
                self._drop_player(target_id)
            else:
                tp.pop("sid", None)
        return self._copy(after)  # type: ignore[return-value]

    async def update_session(
        self, host_id: str, changes: dict[str, Any], now: int, *,
        indexed: tuple[str, ...] | None = None, attribute_limit: int = 16,
        session_id: str | None = None,
    ) -> SessionRecord:
        """Mirrors update.lua. `changes`: name, max, pw (None: remove), attrs, vis, locked."""
        s = self._hosted_waiting_session(host_id, now)
        if "max" in changes and changes["max"] < len(s["members"]):
            raise_script_error("MAX_BELOW_COUNT")
        if changes.get("minp", s.get("minp", 1)) > changes.get("max", s["max"]):
            raise_script_error("MIN_ABOVE_MAX")
        if "attrs" in changes:
            merged = merge_attrs(s.get("attrs"), changes["attrs"], attribute_limit)
            if merged is None:
                raise_script_error("TOO_MANY_ATTRIBUTES")
            s["attrs"] = merged
        for field in ("name", "max", "pw", "vis", "locked"):
            if field in changes:
                s[field] = changes[field]
        # Defaults are left out of the record, as create does.
        if "rule" in changes:
            if changes["rule"] == "host":
                s.pop("rule", None)
            else:
                s["rule"] = changes["rule"]
        if "minp" in changes:
            if changes["minp"] > 1:
                s["minp"] = changes["minp"]
            else:
                s.pop("minp", None)
        # Members confirm the new settings again.
        for m in s["members"]:
            m.pop("ready", None)
        self._touch(s, now)
        s["active"] = now
        if "attrs" in changes:
            self._reindex(s, indexed)
        else:
            self._index_open(s)
        saved = self._save(s)
        self._event(s, {"e": "session_updated"}, saved)
        return fastjson.loads(saved)  # type: ignore[no-any-return]

    async def promote(self, host_id: str, target_id: str, now: int, *,
                      session_id: str | None = None) -> SessionRecord:
        """Mirrors promote.lua."""
        s = self._hosted_session(host_id, now)
        if target_id == host_id:
            raise_script_error("PROMOTE_SELF")
        if target_id not in [m["id"] for m in s["members"]]:
            raise_script_error("PLAYER_NOT_IN_SESSION", target_id)
        s["host"] = target_id
        self._touch(s, now)
        saved = self._save(s)
        self._event(s, {"e": "host_changed", "host_id": target_id}, saved)
        return fastjson.loads(saved)  # type: ignore[no-any-return]

    async def update_player(
        self, player_id: str, attributes: dict[str, Any], now: int, *, attribute_limit: int = 8,
        session_id: str | None = None,
    ) -> SessionRecord:
        """Mirrors update_player.lua."""
        p = self._require(player_id, now)
        s = self._load(p.get("sid"))
        if s is None:
            raise LobbyError(ErrorCode.NOT_IN_SESSION)
        m = next((m for m in s["members"] if m["id"] == player_id), None)
        if m is None:
            raise LobbyError(ErrorCode.NOT_IN_SESSION)
        merged = merge_attrs(m.get("attrs"), attributes, attribute_limit)
        if merged is None:
            raise_script_error("TOO_MANY_ATTRIBUTES")
        m["attrs"] = merged
        self._touch(s, now)
        saved = self._save(s)
        self._event(s, {"e": "player_updated", "player_id": player_id}, saved)
        return fastjson.loads(saved)  # type: ignore[no-any-return]

    async def begin_start(self, player_id: str, now: int, *,
                          session_id: str | None = None) -> SessionRecord:
        s = self._hosted_waiting_session(player_id, now)
        minp = s.get("minp", 1)
        if len(s["members"]) < minp:
            raise_script_error("NOT_ENOUGH_PLAYERS", None, str(minp))
        if s.get("rule") == "all_ready":
            waiting = [m["name"] for m in s["members"] if not m.get("ready")]
            if waiting:
                raise_script_error("NOT_READY", None, ", ".join(waiting))
        self._change_state(s, "CONNECTING", now)
        s["started"] = now
        for m in s["members"]:
            self._holds.pop(m["id"], None)
            if "off" in m:
                m["off"] = 0
        return fastjson.loads(self._save(s))  # type: ignore[no-any-return]

    async def finish_start(
        self, session_id: str, server_id: str, endpoint: str, now: int
    ) -> SessionRecord | None:
        s = self._load(session_id)
        if s is None or s["state"] != "CONNECTING" or s["server_id"] is not None:
            return None
        s["server_id"] = server_id
        s["endpoint"] = endpoint
        self._touch(s, now)
        saved = self._save(s)
        self._servers[server_id] = session_id
        self._event(
            s, {"e": "session_started", "server_id": server_id, "server_endpoint": endpoint},
            saved,
        )
        return fastjson.loads(saved)  # type: ignore[no-any-return]

    async def fail_start(
        self, session_id: str, code: str, message: str, now: int, hold_ms: int
    ) -> SessionRecord | None:
        s = self._load(session_id)
        if s is None or s["state"] != "CONNECTING" or s["server_id"] is not None:
            return None
        self._change_state(s, "WAITING", now)
        s["started"] = None
        for m in s["members"]:
            # A failed start asks everyone to confirm again.
            m.pop("ready", None)
            # Back in the waiting room, players who dropped meanwhile get their hold again.
            mp = self._players.get(m["id"])
            if mp is not None and mp["conn"] == "":
                self._holds[m["id"]] = now + hold_ms
                m["off"] = now + hold_ms
        saved = self._save(s)
        self._event(
            s, {"e": "session_start_failed", "error": {"code": code, "message": message}}, saved
        )
        return fastjson.loads(saved)  # type: ignore[no-any-return]

    async def mark_in_progress(self, session_id: str, now: int) -> SessionRecord:
        s = self._existing(session_id)
        if s["state"] == "IN_PROGRESS":
            return self._copy(s)  # type: ignore[return-value]
        if s["state"] != "CONNECTING":
            raise_script_error("SESSION_NOT_CONNECTING")
        self._change_state(s, "IN_PROGRESS", now)
        saved = self._save(s)
        self._event(s, {"e": "session_in_progress"}, saved)
        return fastjson.loads(saved)  # type: ignore[no-any-return]

    async def complete(self, session_id: str, reason: str, now: int) -> Change:
        s = self._existing(session_id)
        return Change(session_id, self._copy(self._close(s, reason, now)), reason)  # type: ignore[arg-type]

    async def set_ready(self, player_id: str, ready: bool, now: int, *,
                        session_id: str | None = None) -> SessionRecord:
        p = self._require(player_id, now)
        if not p.get("sid"):
            raise_script_error("NOT_IN_SESSION")
        s = self._load(p["sid"])
        m = self._find(s, player_id)
        if s is None or m is None:
            raise_script_error("NOT_IN_SESSION")
        assert s is not None and m is not None
        if s["state"] != "WAITING":
            raise_script_error("SESSION_NOT_WAITING")
        if m.get("ready", False) == ready:
            return self._copy(s)  # type: ignore[return-value]
        if ready:
            m["ready"] = True
        else:
            del m["ready"]
        self._touch(s, now)
        s["active"] = now
        saved = self._save(s)
        self._event(s, {"e": "player_ready", "player_id": player_id, "ready": ready}, saved)
        return fastjson.loads(saved)  # type: ignore[no-any-return]

    async def send_chat(
        self, session_id: str, player_id: str, text: str, now: int
    ) -> dict[str, Any]:
        s = self._load(session_id)
        m = self._find(s, player_id)
        if m is None:
            raise_script_error("NOT_IN_SESSION")
        assert m is not None
        senders = self._chat_sent.setdefault(session_id, {})
        recent = [t for t in senders.get(player_id, ()) if t > now - CHAT_WINDOW_MS]
        if len(recent) >= CHAT_RATE:
            raise_script_error(
                "RATE_LIMITED", None, str(recent[len(recent) - CHAT_RATE] + CHAT_WINDOW_MS - now))
        recent.append(now)
        senders[player_id] = recent
        seq = self._chat_seq[session_id] = self._chat_seq.get(session_id, 0) + 1
        msg = {"seq": seq, "player_id": player_id, "name": m["name"], "text": text,
               "sent_at": now / 1000}
        text_json = _dump(msg)
        log = self._chat.get(session_id)
        if log is None:
            log = self._chat[session_id] = deque(maxlen=CHAT_KEEP)
        log.append(text_json)
        self._publish(session_id, '{"e":"chat_message","sid":' + _dump(session_id)
                      + ',"m":' + text_json + "}")
        return msg

    async def chat_history(self, session_id: str, player_id: str) -> list[dict[str, Any]]:
        if self._find(self._load(session_id), player_id) is None:
            raise_script_error("NOT_IN_SESSION")
        return [fastjson.loads(t) for t in self._chat.get(session_id, ())]

    async def get_session(self, session_id: str) -> SessionRecord | None:
        return self._copy(self._load(session_id))

    async def session_of_code(self, code: str) -> str | None:
        return self._codes.get(code)

    async def get_session_by_server(self, server_id: str) -> SessionRecord | None:
        return self._copy(self._load(self._servers.get(server_id)))

    async def list_sessions(
        self, limit: int, cursor: str | None, *, query: dict[str, Any] | None = None
    ) -> tuple[list[SessionRecord], str | None]:
        """Mirrors list.lua (see there, and RedisStore.list_sessions for `query`)."""
        q = query or {}
        sort = q.get("sort") or "newest"
        conds = [tuple(c) for c in q.get("conds") or ()]
        indexed = q.get("indexed")
        at = cursor_position(cursor, sort)
        desc = sort in ("newest", "most_players")
        drivers = [c for c in conds if is_driver(c[0], c[1], indexed)]
        found: set[str] | None = None
        for key, op, want in drivers:
            ids: set[str] = set()
            for w in [want] if op == "eq" else want:
                ids |= self._ix.get(attr_token(key, w), {}).keys()
            found = ids if found is None else found & ids

        def matches(rec: dict[str, Any]) -> bool:
            if not self._listed(rec):
                return False
            if q.get("min_free") is not None and rec["max"] - len(rec["members"]) < q["min_free"]:
                return False
            if q.get("has_pw") is not None and (rec["pw"] is not None) != q["has_pw"]:
                return False
            attrs = rec.get("attrs") or {}
            return all(holds(attrs, *c) for c in conds)

        out: list[SessionRecord] = []

        def walk(window: list[tuple[Any, str]], full: bool) -> Any:
            last = None
            for pos, sid in window:
                rec = self._load(sid)
                if rec is not None and matches(rec):
                    if len(out) == limit:
                        return last
                    out.append(rec)  # type: ignore[arg-type]
                    last = pos
            if full and window:
                return window[-1][0]
            return None

        if sort not in PLAYER_SORTS:
            if found is None:
                entries = self._open
            else:
                entries = sorted((self._open_seq(sid), sid) for sid in found)
            if desc:
                bound = at[1] if at else None
                seq_order = [e for e in reversed(entries) if bound is None or e[0] < bound]
            else:
                bound = at[1] if at else None
                seq_order = [e for e in entries if bound is None or e[0] > bound]
            window = seq_order[:SCAN_BUDGET]
            nxt = walk(window, len(window) == SCAN_BUDGET)
            return out, None if nxt is None else str(nxt)

        self._expire_snapshots()
        if at is not None:
            token = at[0].removeprefix("snap:")
            held = self._snapshots.get(token)
            if held is None:
                raise LobbyError(ErrorCode.BAD_REQUEST, "cursor expired: list again")
            ordered, offset = held[1], at[1]
        else:
            if found is None:
                scored = self._openp
            else:
                scored = sorted((self._openp_score[sid], sid) for sid in found)
            ordered = [sid for _, sid in (reversed(scored) if desc else scored)][:SNAPSHOT_MAX]
            token, offset = q.get("token") or secrets.token_hex(8), 0
        window = [(offset + i + 1, sid) for i, sid in enumerate(
            ordered[offset:offset + SCAN_BUDGET])]
        pos = walk(window, len(window) == SCAN_BUDGET)
        if pos is None:
            return out, None
        if at is None:
            self._snapshots[token] = (time.time() * 1000 + SNAPSHOT_MS, ordered)
        return out, f"p{token}.{pos}"

    def _open_seq(self, sid: str) -> int:
        return self._openp_score[sid] % PLAYERS_SCALE

    def _expire_snapshots(self) -> None:
        now = time.time() * 1000
        while self._snapshots:
            token, (expires, _) = next(iter(self._snapshots.items()))
            if expires > now:
                break
            del self._snapshots[token]

    async def sweep(self, now: int, timeouts: Timeouts, limit: int = 100,
                    node: str | None = None, fresh: bool = False) -> SweepResult:
        revived = False
        if node and fresh and self._conns.get(node):
            stale = f"{node}#{now}"
            self._conns[stale] = self._conns.pop(node)
            self._dead[stale] = None
        if node:
            if node not in self._nodes:
                revived = True
                self._dead.pop(node, None)
            self._nodes[node] = now + timeouts.node_ms
        for dead in sorted((d, n) for n, d in self._nodes.items() if d < now)[:limit]:
            del self._nodes[dead[1]]
            self._dead[dead[1]] = None
        budget, more = 10 * limit, False
        dropped: list[Change] = []
        for dead_node in list(self._dead):
            if budget <= 0:
                more = True
                break
            on = self._conns.get(dead_node, {})
            pids = list(on)[:budget]
            budget -= len(pids)
            for pid in pids:
                del on[pid]
                p = self._player(pid, now)
                owner = dead_node.split("#", 1)[0]
                if p is not None and p["conn"].rsplit(".", 1)[0] == owner and p["conn"]:
                    rec = self._drop_conn(p, now, timeouts.hold_ms)
                    if rec is not None:
                        dropped.append(Change(rec["id"], rec, None))
            if not on:
                self._conns.pop(dead_node, None)
                del self._dead[dead_node]
            elif budget <= 0:
                more = True
        due = sorted((d, pid) for pid, d in self._holds.items() if d <= now)[:limit]
        changes: list[Change] = dropped
        for _, pid in due:
            del self._holds[pid]
            p = self._players.get(pid)
            if p is None or p["conn"] != "" or not p.get("sid"):
                continue
            s = self._load(p["sid"])
            if s is None or s["state"] != "WAITING":
                continue
            after, ended = self._remove_member(s, pid, "timeout", now)
            self._drop_player(pid)
            changes.append(Change(s["id"], self._copy(after), "abandoned" if ended else None))  # type: ignore[arg-type]
        for pid in [pid for pid, t in self._player_expiry.items() if t <= now]:
            self._drop_player(pid)
        windows = {
            "WAITING": (timeouts.idle_ms, "idle"),
            "CONNECTING": (timeouts.connecting_ms, "server_timeout"),
            "IN_PROGRESS": (timeouts.in_progress_ms, "expired"),
        }
        shortest = min(w for w, _ in windows.values())
        stale = sorted((t, sid) for sid, t in self._deadlines.items() if t <= now - shortest)
        for _, sid in stale[:limit]:
            s = self._load(sid)
            if s is None:
                self._deadlines.pop(sid, None)
                continue
            window, reason = windows[s["state"]]
            since = s["active"]
            if s["state"] == "CONNECTING" and s.get("started"):
                since = s["started"]
            if since + window <= now:
                changes.append(Change(sid, self._copy(self._close(s, reason, now)), reason))  # type: ignore[arg-type]
            else:
                self._deadlines[sid] = since + window - shortest
        return SweepResult(self.epoch, changes, revived=revived, more=more)

    async def reconcile(self, clients: list[LiveClient], now: int, epoch: str | None = None
                        ) -> list[Verdict] | None:
        """Mirrors reconcile.lua."""
        if epoch is not None and epoch != self.epoch:
            return None
        out = []
        for c in clients:
            p = self._player(c.player_id, now)
            kind = "OK"
            if p is None:
                p = self._players[c.player_id] = {
                    "id": c.player_id, "name": c.name, "tokh": c.token_hash, "conn": ""}
                if c.session_id:
                    s = self._load(c.session_id)
                    if s is not None and any(m["id"] == c.player_id for m in s["members"]):
                        p["sid"] = c.session_id
                self._set_conn(p, c.conn)
            elif p["conn"] == "":
                self._set_conn(p, c.conn)
                p.pop("disc", None)
                self._holds.pop(c.player_id, None)
                self._player_expiry.pop(c.player_id, None)
                # As a resume: the others learn that the held seat's player is back.
                s = self._load(p.get("sid"))
                m = self._find(s, c.player_id)
                if s is not None and m is not None and "off" in m:
                    del m["off"]
                    self._touch(s, now)
                    self._event(s, {"e": "player_reconnected", "player_id": c.player_id},
                                self._save(s))
            elif p["conn"] != c.conn:
                kind = "REPLACED"
            session = None
            if kind == "OK" and c.session_id:
                session = self._load(c.session_id)
                if p.get("sid") != c.session_id or session is None or all(
                        m["id"] != c.player_id for m in session["members"]):
                    kind = "OUT"
            out.append(Verdict(kind, session))
        return out

    # A process's memory is never emptied under it: there is nothing to rebuild.
    epoch = "memory"

    async def restore(
        self, epoch: str, records: list[SessionRecord], hold_ms: int, now: int
    ) -> tuple[str, int]:
        return self.epoch, 0

    async def take_restore_lease(self, owner: str, lease_ms: int) -> RestoreLease:
        return RestoreLease(self.epoch, False)

    async def drop_restore_lease(self, owner: str) -> None:
        return None

    async def restore_batch(
        self, owner: str, batch: str, hold_ms: int, lease_ms: int, now: int
    ) -> int | None:
        return None  # nobody ever holds a lease on a store that is never emptied

    async def finish_restore(self, owner: str, epoch: str) -> str | None:
        return self.epoch

    async def current_epoch(self) -> str | None:
        return self.epoch

    async def rebind(self, clients: list[LiveClient], now: int) -> int:
        return 0

    # password guesses (password_guess.lua, rule for rule) ---------------------
    def _bucket(self, key: str, now: int, limits: GuessLimits) -> dict[str, int]:
        b = self._guess_buckets.get(key)
        if b is None or b["exp"] <= now:
            b = {"w": 0, "n": 0, "u": 0, "lv": 0, "exp": 0}
        b = dict(b)
        if now - b["w"] >= limits.window_ms:
            b["w"], b["n"] = now, 0
        if b["u"] > 0 and now - b["u"] >= limits.lock_max_ms:
            b["lv"] = 0
        return b

    def _save_bucket(self, key: str, b: dict[str, int], now: int, limits: GuessLimits) -> None:
        b["exp"] = now + limits.lock_max_ms + limits.window_ms
        self._guess_buckets[key] = b
        if len(self._guess_buckets) > 50_000:  # no key expiry here: drop the lapsed ones
            self._guess_buckets = {k: v for k, v in self._guess_buckets.items()
                                   if v["exp"] > now}
            self._guessed = {k: v for k, v in self._guessed.items() if v[0] > now}

    def _guessed_on(self, sid: str, now: int) -> set[str]:
        entry = self._guessed.get(sid)
        if entry is None or entry[0] <= now:
            return set()
        return entry[1]

    def _mark_guessed(self, sid: str, address: str, now: int, ttl: int) -> None:
        addresses = self._guessed_on(sid, now)
        addresses.add(address)
        self._guessed[sid] = (now + ttl, addresses)

    @staticmethod
    def _lock(b: dict[str, int], now: int, limits: GuessLimits) -> None:
        b["u"] = now + min(limits.lock_max_ms, limits.lock_ms * 2 ** b["lv"])
        b["lv"] += 1
        b["w"], b["n"] = now, 0

    async def password_guess(self, session_id: str, address: str, now: int,
                             limits: GuessLimits) -> GuessVerdict:
        sk, ak = f"s:{session_id}", f"a:{address}"
        if not session_id:  # a guess at no session in particular: the address only
            a = self._bucket(ak, now, limits)
            if a["u"] > now:
                return GuessVerdict(a["u"] - now, "address")
            if a["n"] >= limits.per_address:
                self._lock(a, now, limits)
                self._save_bucket(ak, a, now, limits)
                return GuessVerdict(a["u"] - now, "address")
            a["n"] += 1
            self._save_bucket(ak, a, now, limits)
            return GuessVerdict()
        s, a = self._bucket(sk, now, limits), self._bucket(ak, now, limits)
        if a["u"] > now:
            return GuessVerdict(a["u"] - now, "address")
        guessed = address in self._guessed_on(session_id, now)
        if s["u"] > now and guessed:
            return GuessVerdict(s["u"] - now, "session")
        if a["n"] >= limits.per_address:
            self._lock(a, now, limits)
            self._save_bucket(ak, a, now, limits)
            return GuessVerdict(a["u"] - now, "address")
        if s["u"] <= now and s["n"] >= limits.per_session:
            self._lock(s, now, limits)
            if guessed:
                self._save_bucket(sk, s, now, limits)
                self._mark_guessed(session_id, address, now,
                                   max(limits.window_ms, s["u"] - now))
                return GuessVerdict(s["u"] - now, "session")
        s["n"] += 1
        a["n"] += 1
        self._save_bucket(sk, s, now, limits)
        self._save_bucket(ak, a, now, limits)
        self._mark_guessed(session_id, address, now, max(limits.window_ms, s["u"] - now))
        return GuessVerdict()

    async def password_refund(self, session_id: str, address: str, now: int,
                              limits: GuessLimits) -> None:
        keys = (f"s:{session_id}", f"a:{address}") if session_id else (f"a:{address}",)
        for key in keys:
            b = self._guess_buckets.get(key)
            if b is not None and b["n"] > 0:
                b["n"] -= 1
        self._guessed_on(session_id, now).discard(address)

    async def stats(self) -> dict[str, Any]:
        return {"open_sessions": len(self._open), "held_seats": len(self._holds)}

    async def scan_sessions(
        self, cursor: str | None, count: int
    ) -> tuple[list[SessionRecord], str | None]:
        ids = sorted(self._sessions)
        start = bisect.bisect_right(ids, cursor) if cursor else 0
        page = ids[start:start + count]
        nxt = page[-1] if start + count < len(ids) else None
        return [fastjson.loads(self._sessions[sid]) for sid in page], nxt

    # per-address WebSocket counts (lobby/addresses.py's AddressLedger) ------------
    async def address_apply(self, incarnation: str, ops: list[AddressOp], limit: int
                            ) -> list[bool]:
        results = []
        for kind, address in ops:
            counts = self._addr_counts.setdefault(address, {})
            ok = True
            if kind == "acquire":
                self._addr_of.setdefault(incarnation, set()).add(address)
                ok = sum(counts.values()) < limit
                if ok:
                    counts[incarnation] = counts.get(incarnation, 0) + 1
            elif kind == "release":
                left = counts.get(incarnation, 0) - 1
                if left > 0:
                    counts[incarnation] = left
                else:
                    counts.pop(incarnation, None)
            else:  # forget
                self._addr_of.get(incarnation, set()).discard(address)
            if not counts:
                del self._addr_counts[address]
            results.append(ok)
        return results

    async def address_beat(self, incarnation: str, now: int, lapse_ms: int,
                           first: bool = False) -> bool:
        lapses = self._addr_beats.get(incarnation)
        if (lapses is None and not first) or (lapses is not None and lapses <= now):
            return False
        self._addr_beats[incarnation] = now + lapse_ms
        return True

    async def address_restore(self, incarnation: str, counts: dict[str, int]) -> None:
        for address, n in counts.items():
            self._addr_counts.setdefault(address, {})[incarnation] = n
            self._addr_of.setdefault(incarnation, set()).add(address)

    async def address_sweep(self, now: int, limit: int = 10) -> int:
        dead = sorted((t, inc) for inc, t in self._addr_beats.items() if t < now)[:limit]
        for _, incarnation in dead:
            await self.address_drop(incarnation)
        return len(dead)

    async def address_drop(self, incarnation: str) -> None:
        for address in self._addr_of.pop(incarnation, set()):
            counts = self._addr_counts.get(address)
            if counts is not None:
                counts.pop(incarnation, None)
                if not counts:
                    del self._addr_counts[address]
        self._addr_beats.pop(incarnation, None)

    async def address_count(self, address: str) -> int:
        return sum(self._addr_counts.get(address, {}).values())
