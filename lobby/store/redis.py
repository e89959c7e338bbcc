"""The Redis session store: each rule-bearing change is one Lua script call.

Scripts run atomically, so capacity, state, host and password checks cannot
race across nodes, and each script publishes its own events before it returns,
so a session's events reach every node in the order its changes happened.
One EVALSHA per operation is the round-trip budget (join on a password session:
two, because scrypt runs outside Redis).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

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
from lobby.store.search import (
    LISTED,
    SCAN_BUDGET,
    SNAPSHOT_MAX,
    SNAPSHOT_MS,
    cursor_position,
)

_SCRIPTS = (
    "resume", "disconnect", "create", "join", "leave", "kick", "begin_start",
    "finish_start", "fail_start", "in_progress", "complete", "sweep", "list",
    "restore_lease", "restore_batch", "restore_done", "rebind", "by_server", "update",
    "promote", "update_player", "set_ready", "chat", "chat_history", "reconcile",
    "password_guess",
)
# A single rebuild batch or rebind call stays well under Redis' slow-call
# threshold (about 0.1 ms of script time per session).
RESTORE_BATCH = 200
REBIND_BATCH = 500
RESTORE_LEASE_MS = 10_000
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
    rec = json.loads(raw)
    # cjson encodes an empty Lua table as {}: the last member has left.
    if not rec["members"]:
        rec["members"] = []
    return rec


class RedisStore:
    def __init__(self, client: aioredis.Redis, prefix: str = "lobby:") -> None:
        self.redis = client
        self.prefix = prefix
        prelude = _load_lua("prelude")
        self._scripts = {
            name: client.register_script(prelude + "\n" + _load_lua(name)) for name in _SCRIPTS
        }
        # claim.lua ends by running resume.lua on the player it has taken.
        self._scripts["claim"] = client.register_script(
            prelude + "\n" + _load_lua("claim") + "\n" + _load_lua("resume"))
        # address_*.lua: one key each, in KEYS, without the prelude.
        self._address_scripts = {
            name: client.register_script(_load_lua(name))
            for name in ("address_acquire", "address_release", "address_beat")
        }

    async def start(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()

    async def _run(self, name: str, *args: Any, now: int, keys: tuple[str, ...] = ()) -> Any:
        # redis-py's Script falls back from EVALSHA to EVAL on NOSCRIPT, which is
        # what a restarted (emptied) Redis answers.
        return await self._scripts[name](keys=list(keys), args=[self.prefix, now, *args])

    async def _run_session(self, name: str, *args: Any, now: int) -> SessionRecord | None:
        res = await self._run(name, *args, now=now)
        if res[0] == b"ERR":
            raise_script_error(res[1].decode(), args[1] if len(args) > 1 else None,
                               res[2].decode() if len(res) > 2 else None)
        return json.loads(res[1]) if res[1] else None

    def _session_keys(self, session_id: str) -> tuple[str, str, str]:
        """The session's record, chat log and chat meta keys (as in prelude.lua)."""
        p = self.prefix
        return f"{p}s:{session_id}", f"{p}c:{session_id}", f"{p}cm:{session_id}"

    # players -----------------------------------------------------------------
    async def new_player(
        self, player_id: str, name: str, token_hash: str, conn: str, now: int
    ) -> PlayerInfo:
        record = {"id": player_id, "name": name, "tokh": token_hash, "conn": conn}
        # With the node's set of connected players (see ckey() in prelude.lua),
        # in one round trip.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(f"{self.prefix}p:{player_id}", json.dumps(record))
            pipe.sadd(f"{self.prefix}nc:{conn.rsplit('.', 1)[0]}", player_id)
            await pipe.execute()
        return PlayerInfo(player_id, name, None)

    async def resume(
        self, player_id: str, token_hash: str, conn: str, now: int
    ) -> ResumeResult | None:
        res = await self._run("resume", player_id, token_hash, conn, now=now)
        if res[0] != b"OK":
            return None
        p = json.loads(res[1])
        session = json.loads(res[2]) if len(res) > 2 and res[2] else None
        reconnected = len(res) > 3 and int(res[3]) == 1
        return ResumeResult(PlayerInfo(p["id"], p["name"], p.get("sid")), session, reconnected)

    async def disconnect(
        self, player_id: str, conn: str, now: int, hold_ms: int
    ) -> SessionRecord | None:
        res = await self._run("disconnect", player_id, conn, hold_ms, now=now)
        return json.loads(res[1]) if res[0] == b"OK" else None

    async def claim(
        self, player_id: str, name: str, token_hash: str, conn: str, now: int
    ) -> tuple[ResumeResult, bool]:
        res = await self._scripts["claim"](
            args=[self.prefix, now, player_id, token_hash, conn, name])
        p = json.loads(res[1])
        session = json.loads(res[2]) if res[2] else None
        reconnected = int(res[3]) == 1
        return (ResumeResult(PlayerInfo(p["id"], p["name"], p.get("sid")), session, reconnected),
                len(res) > 4 and res[4] == b"new")

    # sessions ----------------------------------------------------------------
    async def create_session(
        self, player_id: str, session_id: str, name: str, max_players: int,
        pw: PasswordHash | None, now: int, *, attributes: dict[str, Any] | None = None,
        visibility: str = "public", codes: list[str] | None = None,
        indexed: tuple[str, ...] | None = None, start_rule: str = "host", min_players: int = 1,
    ) -> SessionRecord:
        pw_json = json.dumps(pw) if pw else ""
        rec = await self._run_session(
            "create", player_id, session_id, name, max_players, pw_json,
            json.dumps(attributes or {}), visibility, json.dumps(codes or new_join_codes()),
            _indexed_arg(indexed), start_rule, min_players, now=now,
        )
        assert rec is not None
        return rec

    async def join_session(
        self, player_id: str, session_id: str, verified_pw: PasswordHash | None, now: int
    ) -> SessionRecord:
        return (await self.join_session_chat(player_id, session_id, verified_pw, now))[0]

    async def join_session_chat(
        self, player_id: str, session_id: str, verified_pw: PasswordHash | None, now: int
    ) -> tuple[SessionRecord, list[dict[str, Any]]]:
        pw_json = json.dumps(verified_pw) if verified_pw else ""
        res = await self._run("join", player_id, session_id, pw_json, now=now)
        if res[0] == b"PW":
            raise PasswordRequired(json.loads(res[1]))
        if res[0] == b"ERR":
            raise_script_error(res[1].decode())
        chat = [json.loads(raw) for raw in res[2]] if len(res) > 2 else []
        return json.loads(res[1]), chat

    async def _run_change(self, name: str, *args: Any, now: int, reason: str) -> Change:
        res = await self._run(name, *args, now=now)
        if res[0] == b"ERR":
            raise_script_error(res[1].decode())
        ended = res[0] == b"DEL"
        rec = ended_record(res[1])
        return Change(rec["id"], rec, reason if ended else None)

    async def leave_session(self, player_id: str, now: int) -> Change:
        return await self._run_change("leave", player_id, now=now, reason="abandoned")

    async def mark_in_progress(self, session_id: str, now: int) -> SessionRecord:
        rec = await self._run_session("in_progress", session_id, now=now)
        assert rec is not None
        return rec

    async def complete(self, session_id: str, reason: str, now: int) -> Change:
        return await self._run_change("complete", session_id, reason, now=now, reason=reason)

    async def kick(
        self, host_id: str, target_id: str, now: int, *, ban: bool = False
    ) -> SessionRecord:
        rec = await self._run_session("kick", host_id, target_id, "1" if ban else "", now=now)
        assert rec is not None
        return rec

    async def update_session(
        self, host_id: str, changes: dict[str, Any], now: int, *,
        indexed: tuple[str, ...] | None = None, attribute_limit: int = 16,
    ) -> SessionRecord:
        rec = await self._run_session(
            "update", host_id, json.dumps(changes), _indexed_arg(indexed), attribute_limit,
            now=now)
        assert rec is not None
        return rec

    async def promote(self, host_id: str, target_id: str, now: int) -> SessionRecord:
        rec = await self._run_session("promote", host_id, target_id, now=now)
        assert rec is not None
        return rec

    async def update_player(
        self, player_id: str, attributes: dict[str, Any], now: int, *, attribute_limit: int = 8,
    ) -> SessionRecord:
        rec = await self._run_session(
            "update_player", player_id, json.dumps(attributes), attribute_limit, now=now)
        assert rec is not None
        return rec

    async def begin_start(self, player_id: str, now: int) -> SessionRecord:
        rec = await self._run_session("begin_start", player_id, now=now)
        assert rec is not None
        return rec

    async def finish_start(
        self, session_id: str, server_id: str, endpoint: str, now: int
    ) -> SessionRecord | None:
        return await self._run_session("finish_start", session_id, server_id, endpoint, now=now)

    async def fail_start(
        self, session_id: str, code: str, message: str, now: int, hold_ms: int
    ) -> SessionRecord | None:
        return await self._run_session(
            "fail_start", session_id, code, message, hold_ms, now=now
        )

    async def set_ready(self, player_id: str, ready: bool, now: int) -> SessionRecord:
        rec = await self._run_session("set_ready", player_id, "1" if ready else "0", now=now)
        assert rec is not None
        return rec

    async def send_chat(
        self, session_id: str, player_id: str, text: str, now: int
    ) -> dict[str, Any]:
        res = await self._run(
            "chat", player_id, text, CHAT_WINDOW_MS, CHAT_RATE, CHAT_KEEP,
            now=now, keys=self._session_keys(session_id),
        )
        if res[0] == b"ERR":
            raise_script_error(res[1].decode(), None, res[2].decode() if len(res) > 2 else None)
        return json.loads(res[1])  # type: ignore[no-any-return]

    async def chat_history(self, session_id: str, player_id: str) -> list[dict[str, Any]]:
        res = await self._run(
            "chat_history", player_id, now=0, keys=self._session_keys(session_id)[:2]
        )
        if res[0] == b"ERR":
            raise_script_error(res[1].decode())
        return [json.loads(raw) for raw in res[1]]

    async def get_session(self, session_id: str) -> SessionRecord | None:
        raw = await self.redis.get(f"{self.prefix}s:{session_id}")
        return json.loads(raw) if raw else None

    async def session_of_code(self, code: str) -> str | None:
        sid = await self.redis.hget(f"{self.prefix}codes", code)
        return sid.decode() if sid else None

    async def get_session_by_server(self, server_id: str) -> SessionRecord | None:
        # One script, so the index entry and the record are read at one moment.
        raw = await self._run("by_server", server_id, now=0)
        return json.loads(raw) if raw else None

    async def list_sessions(
        self, limit: int, cursor: str | None, *, query: dict[str, Any] | None = None
    ) -> tuple[list[SessionRecord], str | None]:
        q = query or {}
        sort = q.get("sort") or "newest"
        at = cursor_position(cursor, sort)
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
        }
        res = await self._run("list", json.dumps(arg), now=0)
        if res[0] == b"ERR":
            raise LobbyError(ErrorCode.BAD_REQUEST, "cursor expired: list again")
        nxt, raws = res
        # Shared, read-only records (search.RecordCache): pages repeat them.
        return LISTED.records(raws), (nxt.decode() or None)

    async def sweep(self, now: int, timeouts: Timeouts, limit: int = 100,
                    node: str | None = None, fresh: bool = False) -> SweepResult:
        flat = await self._run(
            "sweep", limit, timeouts.idle_ms, timeouts.connecting_ms, timeouts.in_progress_ms,
            node or "", timeouts.node_ms, timeouts.hold_ms, "1" if fresh else "", now=now,
        )
        epoch = flat[0].decode() if flat[0] else None
        changes = []
        for i in range(3, len(flat), 3):
            tag = flat[i + 2].decode()
            changes.append(Change(flat[i].decode(), ended_record(flat[i + 1]),
                                  None if tag == "OK" else tag))
        return SweepResult(epoch, changes, revived=bool(flat[1]), more=bool(flat[2]))

    async def reconcile(self, clients: list[LiveClient], now: int, epoch: str | None = None
                        ) -> list[Verdict] | None:
        if not clients:
            return []
        flat = await self._run("reconcile", json.dumps([_live(c) for c in clients]),
                               epoch or "", now=now)
        if flat == [b"EPOCH"]:
            return None
        return [Verdict(flat[i].decode(), json.loads(flat[i + 1]) if flat[i + 1] else None)
                for i in range(0, len(flat), 2)]

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
                        return done, restored if done == epoch else 0
            # Another owner is at work (or took over): its epoch ends the wait.
            await asyncio.sleep(0.02)

    async def take_restore_lease(self, owner: str, lease_ms: int) -> RestoreLease:
        tag, value = await self._run("restore_lease", "take", owner, lease_ms, now=0)
        if tag == b"DONE":
            return RestoreLease(value.decode(), False)
        if tag == b"MINE":
            return RestoreLease(None, True)
        return RestoreLease(None, False, value.decode())

    async def drop_restore_lease(self, owner: str) -> None:
        await self._run("restore_lease", "drop", owner, 0, now=0)

    async def restore_batch(
        self, owner: str, batch: str, hold_ms: int, lease_ms: int, now: int
    ) -> int | None:
        n = int(await self._run("restore_batch", owner, lease_ms, hold_ms, batch, now=now))
        return None if n < 0 else n

    async def finish_restore(self, owner: str, epoch: str) -> str | None:
        done = await self._run("restore_done", owner, epoch, now=0)
        return done.decode() if done else None

    async def current_epoch(self) -> str | None:
        raw = await self.redis.get(f"{self.prefix}epoch")
        return raw.decode() if raw else None

    async def rebind(self, clients: list[LiveClient], now: int) -> int:
        rebound = 0
        for i in range(0, len(clients), REBIND_BATCH):
            payload = json.dumps([_live(c) for c in clients[i:i + REBIND_BATCH]])
            rebound += int(await self._run("rebind", payload, now=now))
        return rebound

    async def password_guess(self, session_id: str, address: str, now: int,
                             limits: GuessLimits) -> GuessVerdict:
        res = await self._guess(session_id, address, now, limits, "guess")
        if res[0] == b"OK":
            return GuessVerdict()
        return GuessVerdict(int(res[1]), res[2].decode())

    async def password_refund(self, session_id: str, address: str, now: int,
                              limits: GuessLimits) -> None:
        await self._guess(session_id, address, now, limits, "refund")

    async def _guess(self, session_id: str, address: str, now: int, limits: GuessLimits,
                     mode: str) -> Any:
        return await self._run(
            "password_guess", session_id, address, limits.per_session, limits.per_address,
            limits.window_ms, limits.lock_ms, limits.lock_max_ms, mode, now=now)

    async def stats(self) -> dict[str, Any]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(f"{self.prefix}open")
        pipe.zcard(f"{self.prefix}holds")
        open_count, holds = await pipe.execute()
        return {"open_sessions": open_count, "held_seats": holds}

    async def scan_sessions(
        self, cursor: str | None, count: int
    ) -> tuple[list[SessionRecord], str | None]:
        # SCAN, not one script over every session: an operator's listing must
        # not hold Redis for the time it takes to read thousands of records.
        head = f"{self.prefix}s:"
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in head) + "*"
        nxt, keys = await self.redis.scan(int(cursor or 0), match=pattern, count=count)
        keys = [k for k in dict.fromkeys(keys) if b":" not in k[len(head):]]
        raws = await self.redis.mget(keys) if keys else []
        records = [json.loads(r) for r in raws if r]
        return records, (str(nxt) if int(nxt) else None)

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
        async with self.redis.pipeline(transaction=False) as pipe:
            for kind, address in ops:
                key = self._address_key(address)
                if kind == "acquire":
                    pipe.sadd(mine, address)
                    pipe.evalsha(acquire, 1, key, incarnation, limit, ADDRESS_KEEP_MS)
                elif kind == "release":
                    pipe.evalsha(release, 1, key, incarnation, 1)
                else:
                    pipe.srem(mine, address)
            return iter(await pipe.execute())

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


def _live(c: LiveClient) -> dict[str, str]:
    return {"id": c.player_id, "name": c.name, "tokh": c.token_hash, "conn": c.conn,
            **({"sid": c.session_id} if c.session_id else {})}
