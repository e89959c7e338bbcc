"""The Redis session store: each rule-bearing change is one Lua script call on
one hash slot (lobby/store/keys.py has the layout), so it runs on one Redis,
behind Sentinel and on Redis Cluster alike.

Scripts run atomically, so capacity, state, host and password checks cannot
race across nodes, and each session script publishes its own events (SPUBLISH
on the session's slot) before it returns, so a session's events reach every node
in the order its changes happened.

A change that involves a player and a session is two scripts: the player's
pointer (`sid`) is written before a join and cleared after a leave, and every
reader checks it against the session's member list, which is the truth: a
crash between the two steps leaves at worst a pointer to a session that does
not list the player, which shows nothing wrong and is repaired on the next use.
On one Redis the two steps of a leave travel in one pipeline (they run in that
order); on a cluster they go one after the other (a cluster pipeline sends to
several masters at once, in no order).
"""

from __future__ import annotations

import asyncio
import heapq
import json
import secrets
import time
import zlib
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AskError, ClusterError, NoScriptError, ResponseError, TryAgainError

from lobby import fastjson
from lobby.config import StartupError
from lobby.errors import ErrorCode, LobbyError
from lobby.protocol import new_join_codes
from lobby.session import PasswordHash, SessionRecord
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
from lobby.store.keys import Keys
from lobby.store.link import Link
from lobby.store.search import (
    LISTED,
    SCAN_BUDGET,
    SNAPSHOT_MAX,
    SNAPSHOT_MS,
    cursor_position,
)

_SCRIPTS = (
    # a session's bucket (KEYS[1]: the bucket's prefix)
    "create", "join", "leave", "kick", "begin_start", "finish_start", "fail_start",
    "in_progress", "complete", "sweep", "list", "restore", "restore_batch", "update",
    "promote", "update_player", "set_ready", "chat", "chat_history", "s_reconnect", "s_drop",
    # a player (KEYS[1]: the player's key)
    "p_resume", "p_drop", "p_drop_dead", "p_intent", "p_release", "p_reconcile", "p_restore",
    # others: node liveness, password guesses (an address' or a bucket's slot), a
    # key that names a session (join code, game server)
    "nodes", "password_guess", "kv_cas",
)
# A single rebuild batch or rebind call stays well under Redis' slow-call
# threshold (about 0.1 ms of script time per session).
RESTORE_BATCH = 200
REBIND_BATCH = 500
RESTORE_LEASE_MS = 10_000
# Session buckets on a Redis Cluster unless --redis-buckets says otherwise: about 4
# per master of a 3-master cluster (a bucket is the unit a reshard moves).
CLUSTER_BUCKETS = 12
# How long a script call waits for a slot migration of its keys to end.
MIGRATION_WAIT_SECONDS = 15.0
_MIGRATING = [b"ERR", b"MIGRATING"]


def _migration_error(exc: Exception) -> bool:
    text = str(exc)
    return ("non local key" in text or "TRYAGAIN" in text or text.startswith("ASK")
            or ("hash slot" in text and "migrat" in text))


ONCE_MS = 10_000  # how long a script's reply is kept for a repeated call

_ONCE_HEAD = """local __op = KEYS[2]
if __op then
  local done = redis.call('GET', __op)
  if done == 'N' then return nil end
  if done then return cjson.decode(done) end
end
local function __body()
"""
_ONCE_TAIL = f"""
end
local __r = __body()
-- A refusal that changed nothing is not kept: the call is made again on purpose.
if __op and __r ~= MIGRATING and not (type(__r) == 'table' and __r[1] == -2)
    and not (type(__r) == 'table' and __r[1] == 'BUSY') then
  local kept = 'N'
  if __r ~= nil then kept = cjson.encode(__r) end
  redis.call('SET', __op, kept, 'PX', {ONCE_MS})
end
return __r
"""


def _once(body: str) -> str:
    """A script whose reply is kept under its operation key (KEYS[2])."""
    return _ONCE_HEAD + body + _ONCE_TAIL
# Per-address socket counts: a backstop expiry of an address's hash after its last
# acquire (a dead node's counts are dropped by the address sweep long before), and
# the pipeline size when dropping or restoring a node's counts.
ADDRESS_KEEP_MS = 24 * 3600 * 1000
ADDRESS_BATCH = 500


def _load_lua(name: str) -> str:
    return resources.files("lobby.store").joinpath(f"lua/{name}.lua").read_text("utf-8")


def _indexed_arg(indexed: tuple[str, ...] | None) -> str:
    return "*" if indexed is None else json.dumps(list(indexed))


def raise_script_error(code: str, target: str | None = None, detail: str | None = None) -> None:
    if code == "NOT_READY":
        raise LobbyError(ErrorCode.NOT_READY, f"not ready: {detail}")
    if code == "NOT_ENOUGH_PLAYERS":
        raise LobbyError(ErrorCode.NOT_ENOUGH_PLAYERS,
                         f"this session needs at least {detail} players to start")
    if code == "RATE_LIMITED" and detail is not None:
        raise LobbyError(ErrorCode.RATE_LIMITED,
                         f"{CHAT_RATE} chat messages per {CHAT_WINDOW_MS // 1000} s at most: "
                         f"wait {int(detail) / 1000:.1f} s")
    if code == "PLAYER_NOT_IN_SESSION":
        raise LobbyError(ErrorCode.NOT_IN_SESSION, f"player {target} is not in your session")
    if code == "BAD_REQUEST":
        raise LobbyError(ErrorCode.BAD_REQUEST, "the host cannot kick themselves")
    if code == "INTERNAL":
        raise LobbyError(ErrorCode.INTERNAL, "session id collision, try again")
    if code == "SESSION_NOT_CONNECTING":
        raise StateConflict("the session is not CONNECTING")
    if code == "MIN_ABOVE_MAX":
        raise LobbyError(ErrorCode.BAD_REQUEST, "min_players must not exceed max_players")
    if code == "MAX_BELOW_COUNT":
        raise LobbyError(ErrorCode.BAD_REQUEST, "max_players is below the number of players")
    if code == "TOO_MANY_ATTRIBUTES":
        raise LobbyError(ErrorCode.BAD_REQUEST, "too many attributes after this update")
    if code == "BANNED":
        raise LobbyError(ErrorCode.BANNED, "the host banned you from this session")
    if code == "SESSION_LOCKED":
        raise LobbyError(ErrorCode.SESSION_LOCKED, "the host locked this session")
    if code == "PROMOTE_SELF":
        raise LobbyError(ErrorCode.BAD_REQUEST, "you are the host already")
    raise LobbyError(code)


class StateConflict(LobbyError):
    """A game-server callback that does not fit the session's state (HTTP 409)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BAD_REQUEST, message)


def restore_batches(
    records: list[SessionRecord], size: int = RESTORE_BATCH, max_bytes: int = 256 * 1024
) -> list[str]:
    """The records as restore batches (JSON lists) of at most `size` records or
    about `max_bytes` each, newest sessions (highest seq) first, so that the
    first batch already raises the store's counter past every restored session
    and sessions created meanwhile are numbered after them. CPU-bound for many
    records: the rebuild calls it from a thread."""
    ordered = sorted(records, key=lambda r: r["seq"], reverse=True)
    batches: list[str] = []
    batch: list[str] = []
    size_now = 0
    for rec in ordered:
        text = json.dumps(rec, separators=(",", ":"))
        if batch and (len(batch) >= size or size_now + len(text) > max_bytes):
            batches.append("[" + ",".join(batch) + "]")
            batch, size_now = [], 0
        batch.append(text)
        size_now += len(text)
    if batch or not batches:
        batches.append("[" + ",".join(batch) + "]")
    return batches


def ended_record(raw: bytes) -> SessionRecord:
    rec = fastjson.loads(raw)
    # cjson encodes an empty Lua table as {}: the last member has left.
    if not rec["members"]:
        rec["members"] = []
    return rec


def _rec(raw: bytes | str) -> SessionRecord:
    return fastjson.loads(raw)  # type: ignore[no-any-return]


def _conn_node(conn: str) -> str:
    return conn.rsplit(".", 1)[0]


class RedisStore:
    def __init__(self, client: aioredis.Redis | RedisCluster, prefix: str = "lobby:",
                 buckets: int = 1, *, once: bool | None = None, link: Link | None = None
                 ) -> None:
        self.redis = client
        # One Redis: the script calls of the hot path go over `link` (lobby.store.link)
        # instead of redis-py's per-command machinery.
        self.link = link
        self.prefix = prefix
        self.keys = Keys(prefix, buckets)
        self.cluster = isinstance(client, RedisCluster)
        prelude = _load_lua("prelude")
        # Exactly once: redis-py sends a command again when its connection breaks
        # (a cluster reconnecting after a slot move or failover, a Sentinel
        # failover), and a script whose reply was lost would then run twice (a join
        # answered ALREADY_IN_SESSION, a leave NOT_IN_SESSION). With `once`, each
        # call carries an operation key of its own slot; the script keeps its reply
        # there for a few seconds and a repeated call gets that reply back.
        self.once = once if once is not None else self.cluster
        wrap = _once if self.once else (lambda body: body)
        self._scripts = {
            name: client.register_script(prelude + "\n" + wrap(_load_lua(name)))
            for name in _SCRIPTS
        }
        # Buckets whose sweep lease this node holds (it swept them last time).
        self._leases: set[int] = set()
        # Buckets whose rebuild lease this process holds, per owner token.
        self._restoring: dict[str, set[int]] = {}
        # address_*.lua: one key each, in KEYS, without the prelude.
        self._address_scripts = {
            name: client.register_script(_load_lua(name))
            for name in ("address_acquire", "address_release", "address_beat")
        }

    async def start(self) -> None:
        # Which bucket holds a session depends on B: every node of a deployment
        # must agree, or sessions would be looked up in the wrong bucket.
        meta = self.keys.meta
        await self.redis.hsetnx(meta, "buckets", self.keys.buckets)
        held = int(await self.redis.hget(meta, "buckets") or self.keys.buckets)
        if held != self.keys.buckets:
            raise StartupError(
                f"--redis-buckets: this Redis holds sessions in {held} buckets; this node "
                f"was started with {self.keys.buckets} (start it with --redis-buckets {held})",
                2)

    async def close(self) -> None:
        if self.link is not None:
            await self.link.close()
        await self.redis.aclose()

    async def _run(self, name: str, key: str, *args: Any, now: int, client: Any = None) -> Any:
        # redis-py's Script falls back from EVALSHA to EVAL on NOSCRIPT, which is
        # what a restarted (emptied) Redis answers.
        script = self._scripts[name]
        call_args = [self.prefix, now, *args]
        keys = self._script_keys(key)
        if client is not None:
            # Queued in a pipeline (one Redis: no migrations). EVALSHA by hand:
            # redis-py's Script adds a SCRIPT EXISTS round trip to every pipeline;
            # a NOSCRIPT (an emptied Redis) is handled by _pipelined.
            return client.evalsha(script.sha, len(keys), *keys, *call_args)
        if self.link is not None:
            return await self._evalsha(script, keys, call_args)
        deadline = time.monotonic() + MIGRATION_WAIT_SECONDS
        pause = 0.01
        while True:
            try:
                res = await script(keys=keys, args=call_args)
            except (TryAgainError, AskError, ClusterError, ResponseError) as exc:
                # The slot moves under the call (refused before the script ran).
                if isinstance(exc, ResponseError) and not _migration_error(exc):
                    raise
                res = _MIGRATING
            if res != _MIGRATING and res != [-2]:
                return res
            # The script's slot is being migrated: it changed nothing; again
            # once the slot has moved (a reshard moves a slot in well under a second).
            if time.monotonic() > deadline:
                raise LobbyError(ErrorCode.INTERNAL, "the store is resharding: try again")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)

    def _script_keys(self, key: str) -> list[str]:
        """A script call's KEYS: its key, and with `once` an operation key of its own."""
        return [key, f"{key}:op:{secrets.token_hex(8)}"] if self.once else [key]

    async def _evalsha(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        assert self.link is not None
        try:
            return await self.link.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:  # an emptied Redis: load it, then the call runs once
            await self.link.call("SCRIPT", "LOAD", script.script)
            return await self.link.call("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _cmd(self, *args: Any) -> Any:
        """A plain command of the hot path: on the link when there is one (its reply
        unparsed: bytes, ints, lists)."""
        if self.link is not None:
            return await self.link.call(*args)
        return await self.redis.execute_command(*args)

    async def _cmds(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Plain commands in one round trip (one Redis: not a transaction)."""
        if self.link is not None:
            return await self.link.batch(commands)
        async with self.redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()  # type: ignore[no-any-return]

    def _on(self, session_id: str) -> str:
        return self.keys.of_session(session_id)

    async def _ordered(self, *calls: tuple[str, str, tuple[Any, ...]], now: int) -> list[Any]:
        """Script calls that must run in this order, whatever their slots: one
        pipeline on one Redis (executed in order), one call after the other on a
        cluster (whose pipelines send to several masters at once)."""
        if self.cluster:
            return [await self._run(name, key, *args, now=now) for name, key, args in calls]
        return await self._pipelined(list(calls), now)

    async def _together(self, calls: list[tuple[str, str, tuple[Any, ...]]], now: int
                        ) -> list[Any]:
        """Independent script calls, in one round trip per master."""
        if not calls:
            return []
        if self.cluster:
            return list(await asyncio.gather(
                *(self._run(name, key, *args, now=now) for name, key, args in calls)))
        return await self._pipelined(calls, now)

    async def _pipelined(self, calls: list[tuple[str, str, tuple[Any, ...]]], now: int,
                         before: list[tuple[Any, ...]] | None = None) -> list[Any]:
        """Script calls in one pipeline, in order (`before`: plain commands sent
        first). On NOSCRIPT (a Redis restarted empty) no script of it ran: the
        scripts are loaded and the pipeline sent again (its plain commands are
        idempotent)."""
        for attempt in range(2):
            try:
                if self.link is not None:
                    return await self._linked(calls, now, before or [])
                async with self.redis.pipeline(transaction=False) as pipe:
                    for command in before or []:
                        pipe.execute_command(*command)
                    for name, key, args in calls:
                        await self._run(name, key, *args, now=now, client=pipe)
                    return await pipe.execute()  # type: ignore[no-any-return]
            except NoScriptError:
                if attempt:
                    raise
                for script in self._scripts.values():
                    await self.redis.script_load(script.script)
        raise AssertionError("unreachable")

    async def _linked(self, calls: list[tuple[str, str, tuple[Any, ...]]], now: int,
                      before: list[tuple[Any, ...]]) -> list[Any]:
        """_pipelined on the link: every command written at once, in order."""
        assert self.link is not None
        commands = list(before)
        for name, key, args in calls:
            keys = self._script_keys(key)
            commands.append(("EVALSHA", self._scripts[name].sha, len(keys), *keys,
                             self.prefix, now, *args))
        return await self.link.batch(commands)

    def _pointer_error(self, res: Any) -> None:
        if res[0] == b"ERR":
            raise_script_error(res[1].decode())

    async def _pointer(self, player_id: str) -> str:
        """The session the player's record points to (checked by the caller's script)."""
        raw = await self._cmd("GET", self.keys.player(player_id))
        if not raw:
            raise LobbyError(ErrorCode.NOT_AUTHENTICATED)
        sid = fastjson.loads(raw).get("sid")
        if not sid:
            raise LobbyError(ErrorCode.NOT_IN_SESSION)
        return sid  # type: ignore[no-any-return]

    async def _in_session(self, name: str, player_id: str, hint: str | None, *args: Any,
                          now: int) -> Any:
        """Runs a script on the session the player is in: `hint` (what the node
        believes) first, the player's pointer if the session says otherwise."""
        sid = hint
        if sid is None:
            sid = await self._pointer(player_id)
        res = await self._run(name, self._on(sid), player_id, *args, sid, now=now)
        if res[0] == b"ERR" and res[1] == b"NOT_IN_SESSION" and hint is not None:
            pointer = await self._pointer(player_id)
            if pointer != hint:
                res = await self._run(name, self._on(pointer), player_id, *args, pointer,
                                      now=now)
        return res

    async def _session_script(self, name: str, player_id: str, hint: str | None, *args: Any,
                              now: int) -> SessionRecord:
        res = await self._in_session(name, player_id, hint, *args, now=now)
        if res[0] == b"ERR":
            raise_script_error(res[1].decode(), args[0] if args else None,
                               res[2].decode() if len(res) > 2 else None)
        return _rec(res[1])

    async def _released(self, rec: SessionRecord, now: int) -> None:
        """After a session ended: its members' players, its code and server keys."""
        calls = [("p_release", self.keys.player(m["id"]), (rec["id"], "forget"))
                 for m in rec["members"]]
        calls += self._index_cleanup(rec)
        await self._together(calls, now)

    def _index_cleanup(self, rec: SessionRecord) -> list[tuple[str, str, tuple[Any, ...]]]:
        calls: list[tuple[str, str, tuple[Any, ...]]] = []
        if isinstance(rec.get("code"), str):
            calls.append(("kv_cas", self.keys.code(rec["code"]), (rec["id"], "")))  # type: ignore[arg-type]
        if isinstance(rec.get("server_id"), str):
            calls.append(("kv_cas", self.keys.server(rec["server_id"]), (rec["id"], "")))  # type: ignore[arg-type]
        return calls

    def _node_set(self, node: str) -> str:
        """The players whose socket is on a node, so that a dead node's sockets can
        be found without scanning every player (a slot per node)."""
        return f"{self.prefix}{{n:{node.split('#', 1)[0]}}}:players" + (
            "#" + node.split("#", 1)[1] if "#" in node else "")

    # players -----------------------------------------------------------------
    async def new_player(
        self, player_id: str, name: str, token_hash: str, conn: str, now: int
    ) -> PlayerInfo:
        record = {"id": player_id, "name": name, "tokh": token_hash, "conn": conn}
        await self._cmds([("SADD", self._node_set(_conn_node(conn)), player_id),
                          ("SET", self.keys.player(player_id), json.dumps(record))])
        return PlayerInfo(player_id, name, None)

    async def _take(self, mode: str, player_id: str, token_hash: str, conn: str, name: str,
                    now: int) -> tuple[ResumeResult, bool] | None:
        if self.cluster:
            res = (await asyncio.gather(
                self.redis.sadd(self._node_set(_conn_node(conn)), player_id),
                self._run("p_resume", self.keys.player(player_id), player_id, token_hash,
                          conn, mode, name, now=now)))[1]
        else:
            res = (await self._pipelined(
                [("p_resume", self.keys.player(player_id),
                  (player_id, token_hash, conn, mode, name))], now,
                before=[("SADD", self._node_set(_conn_node(conn)), player_id)]))[1]
        if res[0] != b"OK":
            return None
        p = fastjson.loads(res[1])
        old = res[2].decode()
        tell = None
        if old and old != conn:
            tell = self.redis.spublish(
                self.keys.node_channel(_conn_node(old)),
                json.dumps({"e": "replaced", "player_id": player_id, "conn": old}))
        sid = p.get("sid")
        session, back = None, False
        if sid:
            if tell is not None:
                got, _ = await asyncio.gather(
                    self._run("s_reconnect", self._on(sid), player_id, sid, conn, now=now), tell)
            else:
                got = await self._run("s_reconnect", self._on(sid), player_id, sid, conn, now=now)
            if got[0] == b"OK":
                session, back = _rec(got[1]), int(got[2]) == 1
            else:
                await self._run("p_release", self.keys.player(player_id), sid, "", now=now)
                sid = None
        elif tell is not None:
            await tell
        return ResumeResult(PlayerInfo(p["id"], p["name"], sid), session, back), res[3] == b"new"

    async def resume(
        self, player_id: str, token_hash: str, conn: str, now: int
    ) -> ResumeResult | None:
        got = await self._take("resume", player_id, token_hash, conn, "", now)
        return got[0] if got else None

    async def claim(
        self, player_id: str, name: str, token_hash: str, conn: str, now: int
    ) -> tuple[ResumeResult, bool]:
        got = await self._take("claim", player_id, token_hash, conn, name, now)
        assert got is not None
        return got

    async def disconnect(
        self, player_id: str, conn: str, now: int, hold_ms: int
    ) -> SessionRecord | None:
        node_set = self._node_set(_conn_node(conn))
        if self.link is not None:  # one Redis: the SREM in the same call
            res = await self._evalsha(
                self._scripts["p_drop"], [self.keys.player(player_id), node_set],
                [self.prefix, now, conn, hold_ms, "forget"])
            if res[0] != b"OK" or not res[1]:
                return None
            forget = None
        else:
            res = await self._run("p_drop", self.keys.player(player_id), conn, hold_ms, now=now)
            if res[0] != b"OK":
                return None
            forget = self._cmd("SREM", node_set, player_id)
            if not res[1]:
                await forget
                return None
        sid = res[1].decode()
        drop = self._run("s_drop", self._on(sid), player_id, sid, conn, hold_ms, now=now)
        got = (await asyncio.gather(drop, forget))[0] if forget is not None else await drop
        return _rec(got[1]) if got[0] == b"OK" else None

    # sessions ----------------------------------------------------------------
    async def _intent(self, player_id: str, session_id: str, now: int) -> tuple[str, str, str]:
        """The player's pointer set to `session_id` (a join or create is about to
        happen): the player's name, token hash and conn."""
        for _ in range(3):
            res = await self._run("p_intent", self.keys.player(player_id), session_id, now=now)
            if res[0] == b"OK":
                return res[1].decode(), res[2].decode(), res[3].decode()
            self._pointer_error(res)
            other = res[1].decode()  # BUSY: still a member there?
            rec = await self.get_session(other)
            if rec is not None and any(m["id"] == player_id for m in rec["members"]):
                raise LobbyError(ErrorCode.ALREADY_IN_SESSION)
            await self._run("p_release", self.keys.player(player_id), other, "", now=now)
        raise LobbyError(ErrorCode.ALREADY_IN_SESSION)

    async def _reserve_code(self, session_id: str, codes: list[str], now: int) -> str | None:
        """The first candidate no live session holds, now pointing to this session.
        A key left by a session that is gone (a crash after its end) is taken over."""
        for code in codes:
            key = self.keys.code(code)
            if await self.redis.set(key, session_id, nx=True):
                return code
            holder = await self.redis.get(key)
            if holder is None:
                if await self.redis.set(key, session_id, nx=True):
                    return code
                continue
            rec = await self.get_session(holder.decode())
            if (rec is None or rec.get("code") != code) and await self._run(
                    "kv_cas", key, holder.decode(), session_id, now=now):
                return code
        return None

    async def create_session(
        self, player_id: str, session_id: str, name: str, max_players: int,
        pw: PasswordHash | None, now: int, *, attributes: dict[str, Any] | None = None,
        visibility: str = "public", codes: list[str] | None = None,
        indexed: tuple[str, ...] | None = None, start_rule: str = "host", min_players: int = 1,
    ) -> SessionRecord:
        intent = asyncio.ensure_future(self._intent(player_id, session_id, now))
        code = await self._reserve_code(session_id, codes or new_join_codes(), now)
        try:
            pname, ptokh, pconn = await intent
        except BaseException:
            if code is not None:
                await self._run("kv_cas", self.keys.code(code), session_id, "", now=now)
            raise
        if code is None:
            await self._run("p_release", self.keys.player(player_id), session_id, "", now=now)
            raise_script_error("INTERNAL")
        pw_json = json.dumps(pw) if pw else ""
        res = await self._run(
            "create", self._on(session_id), player_id, session_id, name, max_players, pw_json,
            json.dumps(attributes or {}), visibility, code, _indexed_arg(indexed), start_rule,
            min_players, pname, ptokh, pconn, now=now)
        if res[0] == b"ERR":
            await self._together([
                ("p_release", self.keys.player(player_id), (session_id, "")),
                ("kv_cas", self.keys.code(code), (session_id, ""))], now)
            raise_script_error(res[1].decode())
        return _rec(res[1])

    async def join_session(
        self, player_id: str, session_id: str, verified_pw: PasswordHash | None, now: int
    ) -> SessionRecord:
        return (await self.join_session_chat(player_id, session_id, verified_pw, now))[0]

    async def join_session_chat(
        self, player_id: str, session_id: str, verified_pw: PasswordHash | None, now: int
    ) -> tuple[SessionRecord, list[dict[str, Any]]]:
        pw_json = json.dumps(verified_pw) if verified_pw else ""
        res = await self._join_at_once(player_id, session_id, pw_json, now)
        if res is None:
            pname, ptokh, pconn = await self._intent(player_id, session_id, now)
            res = await self._run("join", self._on(session_id), player_id, session_id,
                                  pw_json, pname, ptokh, pconn, now=now)
        if res[0] != b"OK" and not (res[0] == b"ERR" and res[1] == b"ALREADY_IN_SESSION"):
            await self._run("p_release", self.keys.player(player_id), session_id, "", now=now)
        if res[0] == b"PW":
            raise PasswordRequired(fastjson.loads(res[1]))
        if res[0] == b"ERR":
            raise_script_error(res[1].decode())
        chat = [fastjson.loads(raw) for raw in res[2]]
        return _rec(res[1]), chat

    async def _join_at_once(self, player_id: str, session_id: str, pw_json: str, now: int
                            ) -> Any:
        """One Redis on the link: p_intent and join written together (one round trip
        instead of two); join reads what p_intent set. None when p_intent did not
        set the pointer (another session's, or no player): the two-step path then
        repairs or refuses, as on a cluster."""
        if self.link is None or self.once:
            return None
        pkey = self.keys.player(player_id)
        commands = [
            ("EVALSHA", self._scripts["p_intent"].sha, 1, pkey, self.prefix, now, session_id),
            ("EVALSHA", self._scripts["join"].sha, 2, self._on(session_id), pkey, self.prefix,
             now, player_id, session_id, pw_json, "", "", "", "intent")]
        try:
            intent, res = await self.link.batch(commands)
        except NoScriptError:  # an emptied Redis; p_intent is idempotent
            for name in ("p_intent", "join"):
                await self.link.call("SCRIPT", "LOAD", self._scripts[name].script)
            intent, res = await self.link.batch(commands)
        if intent[0] != b"OK" or res[0] == b"INTENT":
            return None
        return res

    def _change(self, res: Any, reason: str) -> Change:
        if res[0] == b"ERR":
            raise_script_error(res[1].decode())
        ended = res[0] == b"DEL"
        rec = ended_record(res[1])
        return Change(rec["id"], rec, reason if ended else None)

    async def leave_session(self, player_id: str, now: int, *, session_id: str | None = None
                            ) -> Change:
        sid = session_id if session_id is not None else await self._pointer(player_id)
        res, _ = await self._ordered(
            ("leave", self._on(sid), (player_id, sid)),
            ("p_release", self.keys.player(player_id), (sid, "")), now=now)
        if res[0] == b"ERR" and session_id is not None:
            return await self.leave_session(player_id, now)  # the node's view was stale
        change = self._change(res, "abandoned")
        if change.ended:
            await self._together(self._index_cleanup(change.record), now)
        return change

    async def mark_in_progress(self, session_id: str, now: int) -> SessionRecord:
        res = await self._run("in_progress", self._on(session_id), session_id, now=now)
        if res[0] == b"ERR":
            raise_script_error(res[1].decode())
        return _rec(res[1])

    async def complete(self, session_id: str, reason: str, now: int) -> Change:
        res = await self._run("complete", self._on(session_id), session_id, reason, now=now)
        change = self._change(res, reason)
        await self._released(change.record, now)
        return change

    async def kick(
        self, host_id: str, target_id: str, now: int, *, ban: bool = False,
        session_id: str | None = None,
    ) -> SessionRecord:
        res = await self._in_session("kick", host_id, session_id, target_id, "1" if ban else "",
                                     now=now)
        if res[0] == b"ERR":
            raise_script_error(res[1].decode(), target_id)
        rec = _rec(res[1])
        await self._run("p_release", self.keys.player(target_id), rec["id"], "forget", now=now)
        return rec

    async def update_session(
        self, host_id: str, changes: dict[str, Any], now: int, *,
        indexed: tuple[str, ...] | None = None, attribute_limit: int = 16,
        session_id: str | None = None,
    ) -> SessionRecord:
        return await self._session_script(
            "update", host_id, session_id, json.dumps(changes), _indexed_arg(indexed),
            attribute_limit, now=now)

    async def promote(self, host_id: str, target_id: str, now: int, *,
                      session_id: str | None = None) -> SessionRecord:
        return await self._session_script("promote", host_id, session_id, target_id, now=now)

    async def update_player(
        self, player_id: str, attributes: dict[str, Any], now: int, *, attribute_limit: int = 8,
        session_id: str | None = None,
    ) -> SessionRecord:
        return await self._session_script(
            "update_player", player_id, session_id, json.dumps(attributes), attribute_limit,
            now=now)

    async def begin_start(self, player_id: str, now: int, *, session_id: str | None = None
                          ) -> SessionRecord:
        return await self._session_script("begin_start", player_id, session_id, now=now)

    async def finish_start(
        self, session_id: str, server_id: str, endpoint: str, now: int
    ) -> SessionRecord | None:
        res = await self._run("finish_start", self._on(session_id), session_id, server_id,
                              endpoint, now=now)
        if not res[1]:
            return None
        # The server's key is written after the session names the server: a
        # reader follows it only to a session that does.
        await self.redis.set(self.keys.server(server_id), session_id)
        return _rec(res[1])

    async def fail_start(
        self, session_id: str, code: str, message: str, now: int, hold_ms: int
    ) -> SessionRecord | None:
        res = await self._run("fail_start", self._on(session_id), session_id, code, message,
                              hold_ms, now=now)
        return _rec(res[1]) if res[1] else None

    async def set_ready(self, player_id: str, ready: bool, now: int, *,
                        session_id: str | None = None) -> SessionRecord:
        return await self._session_script("set_ready", player_id, session_id,
                                          "1" if ready else "0", now=now)

    async def send_chat(
        self, session_id: str, player_id: str, text: str, now: int
    ) -> dict[str, Any]:
        res = await self._run("chat", self._on(session_id), player_id, text, CHAT_WINDOW_MS,
                              CHAT_RATE, CHAT_KEEP, session_id, now=now)
        if res[0] == b"ERR":
            raise_script_error(res[1].decode(), None, res[2].decode() if len(res) > 2 else None)
        return fastjson.loads(res[1])  # type: ignore[no-any-return]

    async def chat_history(self, session_id: str, player_id: str) -> list[dict[str, Any]]:
        res = await self._run("chat_history", self._on(session_id), player_id, session_id,
                              now=0)
        if res[0] == b"ERR":
            raise_script_error(res[1].decode())
        return [fastjson.loads(raw) for raw in res[1]]

    async def get_session(self, session_id: str) -> SessionRecord | None:
        raw = await self._cmd("GET", self.keys.session(session_id))
        return _rec(raw) if raw else None

    async def session_of_code(self, code: str) -> str | None:
        sid = await self.redis.get(self.keys.code(code))
        if not sid:
            return None
        # Checked against the session: the key may outlive it by a crash.
        rec = await self.get_session(sid.decode())
        return rec["id"] if rec is not None and rec.get("code") == code else None

    async def get_session_by_server(self, server_id: str) -> SessionRecord | None:
        sid = await self.redis.get(self.keys.server(server_id))
        if not sid:
            return None
        rec = await self.get_session(sid.decode())
        return rec if rec is not None and rec.get("server_id") == server_id else None

    async def list_sessions(
        self, limit: int, cursor: str | None, *, query: dict[str, Any] | None = None
    ) -> tuple[list[SessionRecord], str | None]:
        q = query or {}
        sort = q.get("sort") or "newest"
        buckets = self.keys.buckets
        if buckets == 1:
            recs, nxt_cursor, _, _ = await self._list_bucket(0, limit, cursor, q, sort)
            return recs, nxt_cursor
        # Each bucket pages on by its own cursor; the page is the first `limit` of
        # their merged candidates, in the sort's order.
        parts = _split_cursor(cursor, buckets)
        token = q.get("token") or secrets.token_hex(8)
        pages = await asyncio.gather(*(
            self._list_bucket(k, limit, parts[k], {**q, "token": token}, sort)
            if parts[k] != "-" else _nothing() for k in range(buckets)))
        # A k-way merge: each bucket's page is used from its head on, so that
        # its cursor can resume just after the last record of it on this page.
        heads = [(_order_key(page[0][0], sort), k, 0) for k, page in enumerate(pages) if page[0]]
        heapq.heapify(heads)
        out: list[SessionRecord] = []
        used = [0] * buckets
        while heads and len(out) < limit:
            _, k, i = heapq.heappop(heads)
            out.append(pages[k][0][i])
            used[k] = i + 1
            if i + 1 < len(pages[k][0]):
                heapq.heappush(heads, (_order_key(pages[k][0][i + 1], sort), k, i + 1))
        nxt: list[str] = []
        for k, (recs, bucket_next, positions, snap) in enumerate(pages):
            if parts[k] == "-":
                nxt.append("-")
            elif used[k] == len(recs):
                nxt.append(bucket_next or "-")  # all of this bucket's page went out
            elif used[k]:
                pos = positions[used[k] - 1]
                nxt.append(pos if sort in ("newest", "oldest") else f"p{snap}.{pos}")
            else:
                nxt.append(parts[k] or "")
        if all(part == "-" for part in nxt):
            return out, None
        return out, "b" + ",".join(nxt)

    async def _list_bucket(self, k: int, limit: int, cursor: str | None, q: dict[str, Any],
                           sort: str) -> tuple[list[SessionRecord], str | None, list[str], str]:
        at = cursor_position(cursor or None, sort)
        indexed = q.get("indexed")
        arg = {
            "sort": sort, "limit": limit, "conds": [list(c) for c in q.get("conds") or ()],
            "min_free": q.get("min_free"), "has_pw": q.get("has_pw"),
            "indexed": "*" if indexed is None else list(indexed),
            "token": q.get("token") or secrets.token_hex(8),
            "budget": SCAN_BUDGET, "snap_max": SNAPSHOT_MAX, "snap_ms": SNAPSHOT_MS,
            "seq": at[1] if at and at[0] == "seq" else False,
            "snap": at[0].removeprefix("snap:") if at and at[0] != "seq" else False,
            "offset": at[1] if at else 0,
            "keep": self.keys.buckets > 1,
        }
        res = await self._run("list", self.keys.bucket_prefix(k), json.dumps(arg), now=0)
        if res[0] == b"ERR":
            raise LobbyError(ErrorCode.BAD_REQUEST, "cursor expired: list again")
        nxt, raws, positions = res
        snap = arg["snap"] or arg["token"]
        # Shared, read-only records (search.RecordCache): pages repeat them.
        return (LISTED.records(raws), (nxt.decode() or None),
                [p.decode() for p in positions], snap)

    async def sweep(self, now: int, timeouts: Timeouts, limit: int = 100,
                    node: str | None = None, fresh: bool = False) -> SweepResult:
        revived, more = False, False
        changes: list[Change] = []
        live: list[str] = []
        if node:
            stale = ""
            if fresh:
                # A new process under a node id that was in use (a fixed --node-id
                # restarted within the timeout): the sockets on the books under it
                # were the old one's.
                mine, renamed = self._node_set(node), self._node_set(f"{node}#{now}")
                if await self.redis.exists(mine):
                    await self.redis.rename(mine, renamed)
                    stale = f"{node}#{now}"
            res = await self._run("nodes", self.keys.nodes, node, timeouts.node_ms, limit,
                                  stale, now=now)
            revived = int(res[0]) == 1
            dead = [d for d in fastjson.loads(res[1]) if d != node]
            live = fastjson.loads(res[2])
            more = await self._drop_dead(dead, now, timeouts.hold_ms, 10 * limit, changes)
        # Each bucket is swept by one node at a time: its owner among the live
        # nodes (rendezvous hashing), the bucket's lease settling hand-overs.
        # A bucket whose lease this node holds but which has another owner now
        # (a node joined) is swept once more and handed over.
        lease_ms = max(timeouts.node_ms, 1000)
        owned = {k for k in range(self.keys.buckets)
                 if not node or _owner(k, live or [node]) == node}
        buckets = sorted(owned | self._leases)
        results = await self._together([
            ("sweep", self.keys.bucket_prefix(k),
             (limit, timeouts.idle_ms, timeouts.connecting_ms, timeouts.in_progress_ms,
              node or "", lease_ms, "" if k in owned else "1", "" if node else "1"))
            for k in buckets], now)
        self._leases = set()
        release: list[tuple[str, str, tuple[Any, ...]]] = []
        for k, flat in zip(buckets, results, strict=True):
            if flat[0] == b"BUSY":
                continue
            if k in owned and node:
                self._leases.add(k)
            for pid, sid in fastjson.loads(flat[1]):
                release.append(("p_release", self.keys.player(pid), (sid, "forget")))
            for i in range(2, len(flat), 3):
                tag = flat[i + 2].decode()
                rec = ended_record(flat[i + 1])
                change = Change(flat[i].decode(), rec, None if tag == "OK" else tag)
                changes.append(change)
                if change.ended:
                    release.extend(self._index_cleanup(rec))
        await self._together(release, now)
        return SweepResult(await self.current_epoch(), changes, revived=revived, more=more)

    async def _drop_dead(self, dead: list[str], now: int, hold_ms: int, budget: int,
                         changes: list[Change]) -> bool:
        """A dead node's sockets are dropped as if each had closed: seat holds, then
        player_left timeout and host migration by the hold sweep. Bounded: `budget`
        players per call; True when some remain (the caller sweeps again at once).
        SPOP hands each player to one sweeping node."""
        more = False
        for entry in dead:
            if budget <= 0:
                return True
            key = self._node_set(entry)
            pids = [p.decode() for p in await self.redis.spop(key, budget) or []]
            budget -= len(pids)
            owner = entry.split("#", 1)[0]
            drops = await self._together(
                [("p_drop_dead", self.keys.player(pid), (owner, hold_ms)) for pid in pids], now)
            seats = [("s_drop", self._on(r[1].decode()), (pid, r[1].decode(), r[2].decode(),
                                                         hold_ms))
                     for pid, r in zip(pids, drops, strict=True)
                     if r[0] == b"OK" and r[1]]
            for got in await self._together(seats, now):
                if got[0] == b"OK":
                    rec = _rec(got[1])
                    changes.append(Change(rec["id"], rec, None))
            if not await self.redis.exists(key):
                await self.redis.srem(f"{self.keys.nodes}dead", entry)
            elif budget <= 0:
                more = True
        return more

    async def reconcile(self, clients: list[LiveClient], now: int, epoch: str | None = None
                        ) -> list[Verdict] | None:
        if not clients:
            return []
        if epoch and await self.current_epoch() != epoch:
            return None
        await self._on_node_sets(clients)
        players = await self._together(
            [("p_reconcile", self.keys.player(c.player_id), (json.dumps(_live(c)), "reconcile"))
             for c in clients], now)
        verdicts: list[Verdict | None] = []
        seats: list[tuple[str, str, tuple[Any, ...]]] = []
        asked: list[int] = []
        for i, (c, res) in enumerate(zip(clients, players, strict=True)):
            if res[0] == b"REPLACED":
                verdicts.append(Verdict("REPLACED", None))
            elif not c.session_id:
                verdicts.append(Verdict("OK", None))
            else:
                verdicts.append(None)
                if res[1].decode() == c.session_id:
                    seats.append(("s_reconnect", self._on(c.session_id),
                                  (c.player_id, c.session_id, c.conn)))
                    asked.append(i)
        answers = dict(zip(asked, await self._together(seats, now), strict=True))
        out: list[Verdict] = []
        for i, c in enumerate(clients):
            v = verdicts[i]
            if v is None:
                got = answers.get(i)
                if got is not None and got[0] == b"OK":
                    v = Verdict("OK", _rec(got[1]))
                else:
                    v = Verdict("OUT", await self.get_session(c.session_id or ""))
            out.append(v)
        return out

    async def rebind(self, clients: list[LiveClient], now: int) -> int:
        rebound = 0
        await self._on_node_sets(clients)
        for i in range(0, len(clients), REBIND_BATCH):
            batch = clients[i:i + REBIND_BATCH]
            players = await self._together(
                [("p_reconcile", self.keys.player(c.player_id), (json.dumps(_live(c)), "rebind"))
                 for c in batch], now)
            seats = []
            for c, res in zip(batch, players, strict=True):
                if res[0] != b"OK":
                    continue
                rebound += 1
                sid = res[1].decode()
                if sid:
                    seats.append(("s_reconnect", self._on(sid), (c.player_id, sid, c.conn)))
            for (_, _, (pid, sid, _c)), got in zip(seats, await self._together(seats, now),
                                                   strict=True):
                if got[0] != b"OK":
                    await self._run("p_release", self.keys.player(pid), sid, "", now=now)
        return rebound

    async def _on_node_sets(self, clients: list[LiveClient]) -> None:
        """Live sockets are on their node's books again (a sweep may have taken
        them off while the node was thought dead, or a rebuild lost them)."""
        by_node: dict[str, list[str]] = {}
        for c in clients:
            by_node.setdefault(_conn_node(c.conn), []).append(c.player_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for node, pids in by_node.items():
                pipe.sadd(self._node_set(node), *pids)
            await pipe.execute()

    # the rebuild of emptied buckets ---------------------------------------------
    async def _epochs(self) -> list[str | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for k in range(self.keys.buckets):
                pipe.get(f"{self.keys.bucket_prefix(k)}epoch")
            raws = await pipe.execute()
        return [r.decode() if r else None for r in raws]

    async def current_epoch(self) -> str | None:
        """The store's generation: its buckets' epochs (None while one is missing:
        its shard came back empty and is to be rebuilt)."""
        epochs = await self._epochs()
        if any(e is None for e in epochs):
            return None
        return epochs[0] if len(epochs) == 1 else "/".join(epochs)  # type: ignore[arg-type]

    async def restore(
        self, epoch: str, records: list[SessionRecord], hold_ms: int, now: int
    ) -> tuple[str, int]:
        while True:
            lease = await self.take_restore_lease(epoch, RESTORE_LEASE_MS)
            if lease.epoch is not None:
                return lease.epoch, 0
            if lease.mine:
                restored = 0
                for batch in restore_batches(records):
                    n = await self.restore_batch(epoch, batch, hold_ms, RESTORE_LEASE_MS, now)
                    if n is None:
                        break
                    restored += n
                else:
                    done = await self.finish_restore(epoch, epoch)
                    if done is not None:
                        return done, restored if epoch in done.split("/") else 0
            # Another owner is at work (or took over): its epoch ends the wait.
            await asyncio.sleep(0.02)

    async def take_restore_lease(self, owner: str, lease_ms: int) -> RestoreLease:
        """The leases of every bucket without an epoch (a rebuild restores those)."""
        epochs = await self._epochs()
        missing = [k for k, e in enumerate(epochs) if e is None]
        if not missing:
            return RestoreLease(await self.current_epoch(), False)
        answers = await self._together(
            [("restore", self.keys.bucket_prefix(k), ("take", owner, lease_ms)) for k in missing],
            0)
        mine = {k for k, a in zip(missing, answers, strict=True) if a[0] == b"MINE"}
        busy = [a[1].decode() for a in answers if a[0] == b"BUSY"]
        self._restoring[owner] = mine
        if mine:
            return RestoreLease(None, True)
        if busy:
            return RestoreLease(None, False, busy[0])
        return RestoreLease(await self.current_epoch(), False)

    async def drop_restore_lease(self, owner: str) -> None:
        await self._together(
            [("restore", self.keys.bucket_prefix(k), ("drop", owner, 0))
             for k in self._restoring.pop(owner, set())], 0)

    async def restore_batch(
        self, owner: str, batch: str, hold_ms: int, lease_ms: int, now: int
    ) -> int | None:
        mine = self._restoring.get(owner, set())
        if not mine:
            return None  # the caller holds no bucket's lease
        by_bucket: dict[int, list[SessionRecord]] = {}
        for rec in fastjson.loads(batch):
            k = self.keys.bucket(rec["id"])
            if k in mine:
                by_bucket.setdefault(k, []).append(rec)
        restored = 0
        follow: list[tuple[str, str, tuple[Any, ...]]] = []
        for k, recs in by_bucket.items():
            res = await self._run("restore_batch", self.keys.bucket_prefix(k), owner, lease_ms,
                                  hold_ms, json.dumps(recs, separators=(",", ":")), now=now)
            if int(res[0]) < 0:
                return None
            restored += int(res[0])
            done = set(fastjson.loads(res[1]))
            for rec in recs:
                if rec["id"] not in done:
                    continue
                for m in rec["members"]:
                    if m.get("tokh"):
                        follow.append(("p_restore", self.keys.player(m["id"]), (json.dumps(
                            {"id": m["id"], "name": m["name"], "tokh": m["tokh"],
                             "sid": rec["id"]}),)))
                if isinstance(rec.get("code"), str):
                    follow.append(("kv_cas", self.keys.code(rec["code"]), ("", rec["id"])))  # type: ignore[arg-type]
        await self._together(follow, now)
        await self._restore_servers([r for recs in by_bucket.values() for r in recs], now)
        return restored

    async def _restore_servers(self, records: list[SessionRecord], now: int) -> None:
        # Records may disagree on a reused server; the latest start is the one it
        # served before Redis was lost, as finish_start would have left it.
        def start_time(rec: SessionRecord | None) -> int:
            started = rec.get("started") if rec else None
            return started if isinstance(started, int) else 0
        for rec in records:
            server = rec.get("server_id")
            if not isinstance(server, str):
                continue
            key = self.keys.server(server)
            other = await self.redis.get(key)
            held = await self.get_session(other.decode()) if other else None
            if held is None or start_time(held) <= start_time(rec):
                await self.redis.set(key, rec["id"])

    async def finish_restore(self, owner: str, epoch: str) -> str | None:
        mine = self._restoring.pop(owner, set())
        answers = await self._together(
            [("restore", self.keys.bucket_prefix(k), ("done", owner, epoch)) for k in mine], 0)
        if any(a[0] == b"LOST" for a in answers):
            return None
        # '' while other nodes still rebuild their buckets: ours are done, not lost.
        return await self.current_epoch() or ""

    # password guesses ------------------------------------------------------------
    async def password_guess(self, session_id: str, address: str, now: int,
                             limits: GuessLimits) -> GuessVerdict:
        addr_key = self.keys.address(address)
        if not session_id:
            res = await self._guess(addr_key, session_id, address, now, limits,
                                    "address-lock")
            return _verdict(res)
        locked, res = await asyncio.gather(
            self._guess(self._on(session_id), session_id, address, now, limits,
                        "session-locked"),
            self._guess(addr_key, session_id, address, now, limits, "address"))
        if res[0] == b"LIMITED":
            return _verdict(res)  # the address was locked already
        if locked[0] != b"OK":
            return _verdict(locked)
        # The session counts first (its lock answers most of an attack's guesses
        # without counting them against their addresses), then the address.
        res = await self._guess(self._on(session_id), session_id, address, now, limits,
                                "session")
        if res[0] != b"OK":
            return _verdict(res)
        res = await self._guess(addr_key, session_id, address, now, limits, "address-lock")
        if res[0] != b"OK":
            await self._guess(self._on(session_id), session_id, address, now, limits,
                              "session-uncount")
        return _verdict(res)

    async def password_refund(self, session_id: str, address: str, now: int,
                              limits: GuessLimits) -> None:
        calls = [("password_guess", self.keys.address(address),
                  _guess_args(session_id, address, limits, "address-refund"))]
        if session_id:
            calls.append(("password_guess", self._on(session_id),
                          _guess_args(session_id, address, limits, "session-refund")))
        await self._together(calls, now)

    async def _guess(self, key: str, session_id: str, address: str, now: int,
                     limits: GuessLimits, mode: str) -> Any:
        return await self._run("password_guess", key,
                               *_guess_args(session_id, address, limits, mode), now=now)

    async def stats(self) -> dict[str, Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for k in range(self.keys.buckets):
                pipe.zcard(f"{self.keys.bucket_prefix(k)}open")
                pipe.zcard(f"{self.keys.bucket_prefix(k)}holds")
            counts = await pipe.execute()
        return {"open_sessions": sum(counts[0::2]), "held_seats": sum(counts[1::2])}

    async def scan_sessions(
        self, cursor: str | None, count: int
    ) -> tuple[list[SessionRecord], str | None]:
        # SCAN, not one script over every session: an operator's listing must
        # not hold Redis for the time it takes to read thousands of records. On a
        # cluster each master is scanned in turn (cursor: "master index:cursor").
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix) + "{s*}:s:*"
        if not self.cluster:
            nxt, keys = await self.redis.scan(int(cursor or 0), match=pattern, count=count)
            more = str(nxt) if int(nxt) else None
        else:
            masters = sorted(self.redis.get_primaries(), key=lambda n: n.name)  # type: ignore[union-attr]
            i, _, c = (cursor or "0:0").partition(":")
            node = masters[int(i)]
            got = await self.redis.execute_command(  # type: ignore[union-attr]
                "SCAN", int(c), "MATCH", pattern, "COUNT", count, target_nodes=node)
            nxt, keys = next(iter(got.values())) if isinstance(got, dict) else got
            if isinstance(nxt, dict):  # redis-py's cluster SCAN: a cursor per node
                nxt = next(iter(nxt.values()))
            if int(nxt):
                more = f"{i}:{int(nxt)}"
            else:
                more = f"{int(i) + 1}:0" if int(i) + 1 < len(masters) else None
        keys = [k for k in dict.fromkeys(keys) if b":" not in k.split(b"}:s:", 1)[1]]
        raws = await asyncio.gather(*(self.redis.get(k) for k in keys))
        records = [_rec(r) for r in raws if r]
        return records, more


    # per-address WebSocket counts (lobby/addresses.py's AddressLedger) ------------
    # Each address's counts are one hash under its own hash tag, and each script
    # call names its one key in KEYS: ready for Redis Cluster as they are.
    def _address_key(self, address: str) -> str:
        return f"{self.prefix}{{a:{address}}}"

    def _addresses_of(self, incarnation: str) -> str:
        """The addresses an incarnation may hold counts of (for dropping them)."""
        return f"{self.prefix}{{an:{incarnation}}}"

    async def address_apply(self, incarnation: str, ops: list[AddressOp], limit: int
                            ) -> list[bool]:
        if not ops:
            return []
        try:
            replies = await self._address_pipeline(incarnation, ops, limit)
        except NoScriptError:
            # An emptied Redis: none of the batch's scripts ran (SADD and SREM are
            # idempotent), so the whole batch runs again once they are loaded.
            for script in self._address_scripts.values():
                await self.redis.script_load(script.script)
            replies = await self._address_pipeline(incarnation, ops, limit)
        results = []
        for kind, _ in ops:
            reply = next(replies)
            if kind == "acquire":
                reply = next(replies)
                results.append(int(reply[0]) == 1)
            else:
                results.append(True)
        return results

    async def _address_pipeline(self, incarnation: str, ops: list[AddressOp], limit: int
                                ) -> Any:
        # EVALSHA by hand: redis-py's Script in a pipeline adds a SCRIPT EXISTS
        # round trip to every batch.
        acquire = self._address_scripts["address_acquire"].sha
        release = self._address_scripts["address_release"].sha
        mine = self._addresses_of(incarnation)
        if self.cluster:
            # A cluster pipeline refuses EVALSHA: the calls go out at once instead
            # (their order does not matter: SADD and SREM are idempotent).
            # An address's own operations keep their order; addresses go at once.
            scripts = self._address_scripts
            by_address: dict[str, list[int]] = {}
            for i, (_, address) in enumerate(ops):
                by_address.setdefault(address, []).append(i)
            replies: list[list[Any]] = [[] for _ in ops]

            async def run(address: str, indexes: list[int]) -> None:
                key = self._address_key(address)
                for i in indexes:
                    kind = ops[i][0]
                    if kind == "acquire":
                        replies[i].append(await self.redis.sadd(mine, address))
                        replies[i].append(await scripts["address_acquire"](
                            keys=[key], args=[incarnation, limit, ADDRESS_KEEP_MS]))
                    elif kind == "release":
                        replies[i].append(await scripts["address_release"](
                            keys=[key], args=[incarnation, 1]))
                    else:
                        replies[i].append(await self.redis.srem(mine, address))

            await asyncio.gather(*(run(a, ix) for a, ix in by_address.items()))
            return iter([r for rs in replies for r in rs])
        commands: list[tuple[Any, ...]] = []
        for kind, address in ops:
            key = self._address_key(address)
            if kind == "acquire":
                commands.append(("SADD", mine, address))
                commands.append(("EVALSHA", acquire, 1, key, incarnation, limit,
                                 ADDRESS_KEEP_MS))
            elif kind == "release":
                commands.append(("EVALSHA", release, 1, key, incarnation, 1))
            else:
                commands.append(("SREM", mine, address))
        return iter(await self._cmds(commands))

    async def address_beat(self, incarnation: str, now: int, lapse_ms: int,
                           first: bool = False) -> bool:
        alive = await self._address_scripts["address_beat"](
            keys=[f"{self.prefix}anodes"], args=[incarnation, now, lapse_ms, "1" if first else ""])
        return int(alive) == 1

    async def address_restore(self, incarnation: str, counts: dict[str, int]) -> None:
        items = list(counts.items())
        for i in range(0, len(items), ADDRESS_BATCH):
            async with self.redis.pipeline(transaction=False) as pipe:
                for address, n in items[i:i + ADDRESS_BATCH]:
                    key = self._address_key(address)
                    pipe.sadd(self._addresses_of(incarnation), address)
                    pipe.hset(key, incarnation, n)
                    pipe.pexpire(key, ADDRESS_KEEP_MS)
                await pipe.execute()

    async def address_sweep(self, now: int, limit: int = 10) -> int:
        dead = await self.redis.zrangebyscore(
            f"{self.prefix}anodes", "-inf", f"({now}", start=0, num=limit)
        for incarnation in dead:
            await self.address_drop(incarnation.decode())
        return len(dead)

    async def address_drop(self, incarnation: str) -> None:
        mine = self._addresses_of(incarnation)
        while True:
            # SPOP: nodes sweeping the same incarnation at once share the work.
            addresses = await self.redis.spop(mine, ADDRESS_BATCH)
            if addresses:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for address in addresses:
                        pipe.hdel(self._address_key(address.decode()), incarnation)
                    await pipe.execute()
            if len(addresses or ()) < ADDRESS_BATCH:
                break
        await self.redis.zrem(f"{self.prefix}anodes", incarnation)

    async def address_count(self, address: str) -> int:
        return sum(int(n) for n in await self.redis.hvals(self._address_key(address)))


def _verdict(res: Any) -> GuessVerdict:
    if res[0] == b"OK":
        return GuessVerdict()
    return GuessVerdict(int(res[1]), res[2].decode())


def _guess_args(session_id: str, address: str, limits: GuessLimits, mode: str) -> tuple[Any, ...]:
    return (session_id, address, limits.per_session, limits.per_address, limits.window_ms,
            limits.lock_ms, limits.lock_max_ms, mode)


def _owner(bucket: int, nodes: list[str]) -> str:
    """The node that sweeps a bucket: the highest of hash(node, bucket)."""
    return max(nodes, key=lambda n: zlib.crc32(f"{n}/{bucket}".encode()))


async def _nothing() -> tuple[list[SessionRecord], str | None, list[str], str]:
    return [], None, [], ""


def _split_cursor(cursor: str | None, buckets: int) -> list[str | None]:
    if cursor is None:
        return [None] * buckets
    if not cursor.startswith("b"):
        raise LobbyError(ErrorCode.BAD_REQUEST, "bad cursor")
    parts = cursor[1:].split(",")
    if len(parts) != buckets:
        raise LobbyError(ErrorCode.BAD_REQUEST, "bad cursor")
    return [p or None for p in parts]


def _order_key(rec: SessionRecord, sort: str) -> tuple[Any, ...]:
    """The merge order of the buckets' pages (within a bucket, its own order)."""
    created, sid = rec["created"], rec["id"]
    if sort == "oldest":
        return (created, sid)
    if sort == "most_players":
        return (-len(rec["members"]), -created, sid)
    if sort == "fewest_players":
        return (len(rec["members"]), created, sid)
    return (-created, sid)

def _live(c: LiveClient) -> dict[str, str]:
    return {"id": c.player_id, "name": c.name, "tokh": c.token_hash, "conn": c.conn,
            **({"sid": c.session_id} if c.session_id else {})}
