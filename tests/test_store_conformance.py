"""One suite, two stores: embedded mode (MemoryStore) must behave exactly like Redis mode.

Every test runs against both stores through the `store` harness, which also
collects what the store publishes. Channels are normalised to the memory form
("<session id>" / "node:<id>") so one set of assertions holds for both. Clocks
are explicit numbers: a seat hold or a session timeout expires because `sweep`
is called with a later `now`, never because the test slept.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from lobby import redisconn
from lobby.errors import ErrorCode, LobbyError
from lobby.hub import split_event as hub_split
from lobby.protocol import attr_value
from lobby.redisconn import RedisTarget
from lobby.session import Member, PasswordHash, SessionRecord, bus_view, public_session
from lobby.store.base import (
    Change,
    GuessLimits,
    GuessVerdict,
    LiveClient,
    PasswordRequired,
    PlayerInfo,
    RestoreLease,
    ResumeResult,
    SessionStore,
    SweepResult,
    Timeouts,
)
from lobby.store.memory import MemoryStore
from lobby.store.redis import RedisStore, StateConflict, restore_batches

T0 = 1_700_000_000_000  # a realistic epoch in ms: Lua's cjson must round-trip it exactly
HOLD = 30_000
PW: PasswordHash = {"salt": "a1" * 16, "hash": "b2" * 32}
# Session timeouts far beyond any clock a hold test reaches, so that those tests
# see seat holds only.
QUIET = Timeouts(idle_ms=10**12, connecting_ms=10**12, in_progress_ms=10**12)
# Distinct windows, none of them the shortest by accident of the test: the sweep
# derives every state's deadline from the shortest one.
TO = Timeouts(idle_ms=60_000, connecting_ms=20_000, in_progress_ms=600_000)

Event = tuple[str, dict[str, Any]]  # (normalised channel, decoded message)


# harness ---------------------------------------------------------------------


class Harness:
    """A store plus the events it published, in publish order."""

    kind: str
    store: SessionStore
    epoch: str | None  # what sweep reports as the store's generation
    # Session buckets: with more than one, `seq` counts creations per bucket and
    # sweep limits apply per bucket.
    buckets = 1

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._arrived = asyncio.Event()

    def _collect(self, channel: str, message: str | bytes) -> None:
        self.events.append((channel, _checked_layout(message)))
        self._arrived.set()

    async def wait_events(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.events) < n:
                self._arrived.clear()
                await self._arrived.wait()

    async def fence(self) -> None:
        """Returns once everything published so far has been collected."""

    async def drain(self, expect: int | None = None, timeout: float = 5.0) -> list[Event]:
        """The events since the last drain; with `expect`, exactly that many.

        Waiting for a count alone could miss a surplus event still in flight,
        so the fence runs afterwards to make "exactly" mean exactly.
        """
        if expect is not None:
            await self.wait_events(expect, timeout)
        await self.fence()
        got, self.events = self.events, []
        if expect is not None:
            assert len(got) == expect, got
        for channel, ev in got:
            if not channel.startswith("node:"):
                assert ev["sid"] == channel, (channel, ev)
        return got

    async def until_player_expired(self, player_id: str) -> None:
        """A session-less disconnected player is gone (Redis: its key's PX ran out)."""

    async def close(self) -> None:
        """Releases connections."""


class MemoryHarness(Harness):
    kind = "memory"
    epoch = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStore(self._publish)

    def _publish(self, channel: str, message: str) -> None:
        # The memory bus hands messages on as text, exactly like Redis would.
        assert isinstance(message, str)
        # Compared as a bus carries them: the Redis stores publish the record's bus
        # view (no token or password hashes), and the tests expect exactly that; the
        # memory store's events never leave the process and carry the whole record.
        ev = _checked_layout(message)
        if isinstance(ev.get("s"), dict):
            ev["s"] = bus_view(ev["s"])
        self.events.append((channel, ev))
        self._arrived.set()


def _checked_layout(message: str | bytes) -> dict[str, Any]:
    """A bus message, decoded; a session event's members' view is checked and
    taken out, so that the tests compare the rest. The view is what nodes forward
    to members without decoding it: it must be exactly what public_session makes
    of the record the event carries (the Lua scripts build it on their own), and
    where lobby.hub cuts it out."""
    ev = json.loads(message)
    if "p" not in ev:
        assert "pl" not in ev and "u" not in ev, ev
        return ev
    fields, view = hub_split(message)
    assert view is not None and json.loads(view) == ev["p"], (message, view)
    assert fields == {k: v for k, v in ev.items() if k not in ("s", "p")}, (fields, ev)
    assert ev["p"] == public_session(ev["s"], member=True), ev
    assert ev.pop("u") == ev["s"]["updated"]
    del ev["p"], ev["pl"]
    return ev


# Sharded pub/sub has no pattern subscription: the harness subscribes to the
# channels of the nodes the tests use up front, and to each session's as it
# appears (watch()); a few session ids up front for tests that write records
# themselves.
WATCHED_SESSIONS = [f"s{i}" for i in range(10)]
WATCHED_NODES = [f"n{i}" for i in range(10)] + ["eu.west", "eu"]


class RedisHarness(Harness):
    kind = "redis"

    def __init__(self, url: str, buckets: int = 1, client: Any = None) -> None:
        super().__init__()
        self.epoch = None  # a fresh prefix has no epoch key until a restore sets it
        self.client = client if client is not None else aioredis.from_url(url)
        # A unique prefix proves the store confines itself to the prefix it is given.
        self.prefix = f"conf-{uuid.uuid4().hex[:8]}:"
        # One Redis: the store's script calls go over its multiplexed link, as on a
        # node (lobby/store/link.py); the Sentinel and Cluster harnesses use redis-py.
        link = redisconn.link(RedisTarget("single", "--redis-url", url=url)) if (
            client is None) else None
        self.store = RedisStore(self.client, self.prefix, buckets, link=link)
        keys = self.store.keys
        self._channels = {keys.channel(sid).encode(): sid for sid in WATCHED_SESSIONS}
        self._channels.update(
            {keys.node_channel(node).encode(): f"node:{node}" for node in WATCHED_NODES})
        self._fence_channel = f"{self.prefix}fence"
        self._pubsub = self.client.pubsub()
        self._reader: asyncio.Task[None] | None = None
        self._fences: dict[str, asyncio.Future[None]] = {}
        self._confirm: dict[bytes, asyncio.Future[None]] = {}
        # Sessions made by the test are watched as they appear (create publishes
        # nothing, so nothing of theirs is missed), restored ones before restoring.
        create, restore, restore_batch = (
            self.store.create_session, self.store.restore, self.store.restore_batch)

        async def watched_create(*args: Any, **kwargs: Any) -> Any:
            rec = await create(*args, **kwargs)
            await self.watch(rec["id"])
            return rec

        async def watched_restore(epoch: str, records: Any, *args: Any) -> Any:
            for rec in records:
                await self.watch(rec["id"])
            return await restore(epoch, records, *args)

        async def watched_batch(owner: str, batch: str, *args: Any) -> Any:
            for rec in json.loads(batch):
                await self.watch(rec["id"])
            return await restore_batch(owner, batch, *args)

        self.store.create_session = watched_create  # type: ignore[method-assign]
        self.store.restore = watched_restore  # type: ignore[method-assign]
        self.store.restore_batch = watched_batch  # type: ignore[method-assign]

    async def watch(self, session_id: str) -> None:
        channel = self.store.keys.channel(session_id).encode()
        if channel in self._channels:
            return
        self._channels[channel] = session_id
        fut = self._confirm[channel] = asyncio.get_running_loop().create_future()
        await self._pubsub.ssubscribe(channel)
        await asyncio.wait_for(fut, 5)

    async def open(self) -> None:
        await self._pubsub.ssubscribe(self._fence_channel, *self._channels)
        # Events published before Redis confirms the subscriptions would be lost.
        confirmed = 0
        async with asyncio.timeout(5):
            while confirmed < len(self._channels) + 1:
                msg = await self._pubsub.get_message(timeout=1.0)
                if msg is not None and msg["type"] == "ssubscribe":
                    confirmed += 1
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self._pubsub.listen():
            if msg["type"] == "ssubscribe":
                fut = self._confirm.pop(msg["channel"], None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
                continue
            if msg["type"] != "smessage":
                continue
            if msg["channel"].decode() == self._fence_channel:
                fut = self._fences.pop(msg["data"].decode(), None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            else:
                self._collect(self._channels[msg["channel"]], msg["data"])

    async def fence(self) -> None:
        # Redis delivers one subscriber's messages in publish order, so once our
        # own marker arrives, every event the store published before it has too.
        token = uuid.uuid4().hex
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fences[token] = fut
        await self.client.spublish(self._fence_channel, token)
        await asyncio.wait_for(fut, 5)

    async def until_player_expired(self, player_id: str) -> None:
        await self.until_key_expired(self.store.keys.player(player_id))

    async def until_key_expired(self, key: str) -> None:
        async with asyncio.timeout(5):
            # PTTL is -2 once the key is gone; reading a key past its deadline
            # expires it at once, so this sleeps for about the remaining TTL.
            while (ttl := await self.client.pttl(key)) != -2:
                assert ttl != -1, f"{key} has no expiry, so it would never go"
                await asyncio.sleep(max(ttl, 1) / 1000)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
        await self._pubsub.aclose()
        if self.store.link is not None:
            await self.store.link.close()
        await self.client.aclose()


class ClusterHarness(RedisHarness):
    """The Redis store on a real 3-master Redis Cluster, sessions in 8 buckets.

    A cluster has one pub/sub connection per master, so there is no single
    order of all messages: the fence publishes its marker on every watched
    channel (each ordered after that channel's own events) and waits for all."""

    kind = "cluster"

    def __init__(self, url: str, buckets: int = 8) -> None:
        nodes = [ClusterNode(h, int(p)) for h, _, p in (
            a.rpartition(":") for a in url.removeprefix("redis+cluster://").split(","))]
        super().__init__(url, buckets, RedisCluster(startup_nodes=nodes))
        self.buckets = buckets
        self._marks: dict[str, set[bytes]] = {}

    async def open(self) -> None:
        await self.client.initialize()  # the slot map, which pub/sub routing needs
        await self._pubsub.ssubscribe(*self._channels)
        self._reader = asyncio.create_task(self._read())

    async def watch(self, session_id: str) -> None:
        channel = self.store.keys.channel(session_id).encode()
        if channel in self._channels:
            return
        self._channels[channel] = session_id
        await self._pubsub.ssubscribe(channel)

    async def _read(self) -> None:
        while True:
            msg = await self._pubsub.get_sharded_message(timeout=0.05)
            if msg is None or msg["type"] != "smessage":
                continue
            data = msg["data"]
            if data.startswith(b'{"fence":'):
                token = json.loads(data)["fence"]
                waiting = self._marks.get(token)
                if waiting is not None:
                    waiting.discard(msg["channel"])
                    if not waiting:
                        fut = self._fences.pop(token, None)
                        if fut is not None and not fut.done():
                            fut.set_result(None)
            else:
                self._collect(self._channels[msg["channel"]], data)

    async def fence(self) -> None:
        token = uuid.uuid4().hex
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fences[token] = fut
        self._marks[token] = set(self._channels)
        mark = json.dumps({"fence": token})
        await asyncio.gather(*(self.client.spublish(ch, mark) for ch in self._channels))
        await asyncio.wait_for(fut, 5)


async def open_harness(kind: str, request: pytest.FixtureRequest) -> Harness:
    if kind == "memory":
        return MemoryHarness()
    harness: RedisHarness
    if kind == "cluster":
        harness = ClusterHarness(request.getfixturevalue("cluster_url"))
    elif kind == "sentinel":
        setup = request.getfixturevalue("sentinel_target")
        sentinel = Sentinel(setup.sentinel_addresses())
        harness = RedisHarness("", 1, sentinel.master_for(setup.master_name))
    else:
        harness = RedisHarness(request.getfixturevalue("redis_url"))
    await harness.open()
    return harness


# Every store the lobby runs on: in memory, one Redis, a Redis Cluster, and a
# Redis behind Sentinel.
@pytest.fixture(params=["memory", "redis", "cluster", "sentinel"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    harness = await open_harness(request.param, request)
    try:
        yield harness
    finally:
        await harness.close()


# helpers ---------------------------------------------------------------------


def name(pid: str) -> str:
    return pid.title()


def tokh(pid: str) -> str:
    return f"tokh-{pid}"


def conn(pid: str, node: str = "n1") -> str:
    return f"{node}.{pid}"


def member(pid: str, joined: int) -> Member:
    return {"id": pid, "name": name(pid), "joined": joined, "tokh": tokh(pid), "attrs": {}}


def creation_seq(h: Harness, sid: str, before: list[str]) -> int:
    """The `seq` of session `sid` created after `before`: counted per bucket."""
    if h.buckets == 1:
        return len(before) + 1
    keys = h.store.keys  # type: ignore[attr-defined]
    return 1 + sum(keys.bucket(other) == keys.bucket(sid) for other in before)


def ids(rec: SessionRecord | dict[str, Any]) -> list[str]:
    return [m["id"] for m in rec["members"]]


def summary(events: list[Event]) -> list[tuple[str, str, int | None]]:
    return [(ch, ev["e"], ev.get("v")) for ch, ev in events]


async def add_players(h: Harness, *pids: str, now: int = T0) -> None:
    for pid in pids:
        info = await h.store.new_player(pid, name(pid), tokh(pid), conn(pid), now)
        assert info == PlayerInfo(pid, name(pid), None)


async def sweep(
    h: Harness, now: int, timeouts: Timeouts = QUIET, limit: int = 100
) -> list[Change]:
    """The sweep's changes; the epoch it reports must be the store's current one."""
    result = await h.store.sweep(now, timeouts, limit)
    assert isinstance(result, SweepResult)
    assert result.epoch == h.epoch, result
    return result.changes


def ended(rec: SessionRecord, now: int, **fields: Any) -> SessionRecord:
    """The final record of a session that ended at `now`: one more version."""
    return {**rec, "v": rec["v"] + 1, "updated": now, **fields}  # type: ignore[typeddict-item]


async def fails(code: ErrorCode, call: Awaitable[Any]) -> LobbyError:
    with pytest.raises(LobbyError) as info:
        await call
    assert info.value.code == code, info.value
    return info.value


async def open_ids(h: Harness) -> list[str]:
    recs, nxt = await h.store.list_sessions(100, None)
    assert nxt is None
    for rec in recs:
        assert rec == await h.store.get_session(rec["id"])
    return [r["id"] for r in recs]


# players and sessions ----------------------------------------------------------


async def test_create_session(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol")
    rec = await h.store.create_session("alice", "s1", "", 4, None, T0 + 5)
    assert rec == {
        "id": "s1", "name": "Alice's game", "host": "alice", "state": "WAITING", "max": 4,
        "members": [member("alice", T0 + 5)], "pw": None, "server_id": None,
        "endpoint": None, "seq": 1, "v": 1, "started": None, "created": T0 + 5,
        "updated": T0 + 5, "active": T0 + 5,
        "attrs": {}, "vis": "public", "locked": False, "code": rec["code"], "bans": {}, "ix": {},
    }
    assert re.fullmatch(r"[23456789ABCDEFGHJKLMNPQRSTUVWXYZ]{6}", rec["code"])
    assert await h.store.get_session("s1") == rec

    named = await h.store.create_session("bob", "s2", "Bob's \"room\" / 2", 2, PW, T0 + 6)
    assert (named["name"], named["pw"], named["max"], named["seq"], named["v"]) == (
        "Bob's \"room\" / 2", PW, 2, creation_seq(h, "s2", ["s1"]), 1)
    assert await h.store.get_session("s2") == named

    create = h.store.create_session
    await fails(ErrorCode.ALREADY_IN_SESSION, create("alice", "s3", "", 4, None, T0))
    await fails(ErrorCode.NOT_AUTHENTICATED, create("ghost", "s4", "", 4, None, T0))
    # A colliding session id must not overwrite the live session.
    await fails(ErrorCode.INTERNAL, h.store.create_session("carol", "s1", "", 4, None, T0))
    assert await h.store.get_session("s1") == rec
    assert await h.store.get_session("s3") is None
    assert await h.store.get_session("s4") is None
    # carol's failed create left her free to create.
    assert (await h.store.create_session("carol", "s5", "", 4, None, T0 + 7))["seq"] == (
        creation_seq(h, "s5", ["s1", "s2"]))

    # Nobody else is in a new session, so creating publishes nothing.
    await h.drain(0)
    assert await h.store.stats() == {"open_sessions": 3, "held_seats": 0}


async def test_join(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol", "dave")
    await h.store.create_session("alice", "s1", "", 3, None, T0)

    rec = await h.store.join_session("bob", "s1", None, T0 + 100)
    assert rec["members"] == [member("alice", T0), member("bob", T0 + 100)]
    assert (rec["host"], rec["state"], rec["v"], rec["created"], rec["updated"], rec["active"]) == (
        "alice", "WAITING", 2, T0, T0 + 100, T0 + 100)
    assert await h.drain(1) == [("s1", {
        "e": "player_joined", "player_id": "bob", "name": "Bob", "sid": "s1", "v": 2,
            "s": bus_view(rec),
    })]

    await fails(ErrorCode.SESSION_NOT_FOUND, h.store.join_session("carol", "nope", None, T0))
    await fails(ErrorCode.ALREADY_IN_SESSION, h.store.join_session("bob", "s1", None, T0))
    await fails(ErrorCode.ALREADY_IN_SESSION, h.store.join_session("alice", "s1", None, T0))
    await fails(ErrorCode.NOT_AUTHENTICATED, h.store.join_session("ghost", "s1", None, T0))

    full = await h.store.join_session("carol", "s1", None, T0 + 200)
    assert ids(full) == ["alice", "bob", "carol"] and full["v"] == 3
    await fails(ErrorCode.SESSION_FULL, h.store.join_session("dave", "s1", None, T0 + 300))
    assert await h.store.get_session("s1") == full
    assert summary(await h.drain(1)) == [("s1", "player_joined", 3)]


async def test_join_after_begin_start_is_refused(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.begin_start("alice", T0 + 1)
    await fails(ErrorCode.SESSION_NOT_WAITING, h.store.join_session("bob", "s1", None, T0 + 2))
    assert ids(await h.store.get_session("s1") or {"members": []}) == ["alice"]
    await h.drain(0)


async def test_join_password(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol")
    await h.store.create_session("alice", "s1", "", 2, PW, T0)

    with pytest.raises(PasswordRequired) as need:
        await h.store.join_session("bob", "s1", None, T0 + 1)
    assert need.value.pw == PW

    for wrong in ({"salt": PW["salt"], "hash": "c3" * 32}, {"salt": "d4" * 16, "hash": PW["hash"]}):
        with pytest.raises(PasswordRequired) as again:
            await h.store.join_session("bob", "s1", wrong, T0 + 2)  # type: ignore[arg-type]
        assert again.value.pw == PW
    await h.drain(0)

    rec = await h.store.join_session("bob", "s1", need.value.pw, T0 + 3)
    assert ids(rec) == ["alice", "bob"] and rec["pw"] == PW and rec["v"] == 2
    assert await h.drain(1) == [("s1", {
        "e": "player_joined", "player_id": "bob", "name": "Bob", "sid": "s1", "v": 2,
            "s": bus_view(rec),
    })]
    # Capacity is checked before the password, so a full room never asks for one.
    await fails(ErrorCode.SESSION_FULL, h.store.join_session("carol", "s1", None, T0 + 4))


# listing ---------------------------------------------------------------------


async def test_list_sessions_shows_waiting_sessions_with_a_free_seat(store: Harness) -> None:
    h = store
    await add_players(h, "a", "b", "c", "d")
    for i, pid in enumerate("abc", 1):
        await h.store.create_session(pid, f"s{i}", "", 2, None, T0 + i)
    assert await open_ids(h) == ["s3", "s2", "s1"]

    await h.store.join_session("d", "s2", None, T0 + 10)
    assert await open_ids(h) == ["s3", "s1"]
    await h.store.leave_session("d", T0 + 11)
    # It keeps its creation slot rather than jumping to the front.
    assert await open_ids(h) == ["s3", "s2", "s1"]

    await h.store.begin_start("c", T0 + 12)
    assert await open_ids(h) == ["s2", "s1"]
    await h.store.fail_start("s3", ErrorCode.NO_SERVER_AVAILABLE, "none free", T0 + 13, HOLD)
    assert await open_ids(h) == ["s3", "s2", "s1"]

    await h.store.begin_start("c", T0 + 14)
    await h.store.finish_start("s3", "gs-1", "10.0.0.1:7777", T0 + 15)
    assert await open_ids(h) == ["s2", "s1"]
    assert await h.store.stats() == {"open_sessions": 2, "held_seats": 0}
    assert [e for _, e, _ in summary(await h.drain(4))] == [
        "player_joined", "player_left", "session_start_failed", "session_started"]


async def test_list_sessions_pagination(store: Harness) -> None:
    h = store
    pids = [f"p{i:02d}" for i in range(25)]
    await add_players(h, *pids, "late")
    for i, pid in enumerate(pids):
        await h.store.create_session(pid, f"s{i:02d}", "", 4, None, T0 + i)
    newest_first = [f"s{i:02d}" for i in reversed(range(25))]

    pages: list[list[str]] = []
    cursor: str | None = None
    for _ in range(10):  # bounded: a cursor that never ends must fail, not hang
        recs, cursor = await h.store.list_sessions(10, cursor)
        pages.append([r["id"] for r in recs])
        if cursor is None:
            break
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [sid for page in pages for sid in page] == newest_first

    # A session created between pages must not shift the pages after the cursor.
    first, cursor = await h.store.list_sessions(10, None)
    await h.store.create_session("late", "s-late", "", 4, None, T0 + 100)
    second, _ = await h.store.list_sessions(10, cursor)
    assert [r["id"] for r in first + second] == newest_first[:20]

    # The look-ahead decides next_cursor: none when the page reaches the end exactly.
    everything, nxt = await h.store.list_sessions(26, None)
    assert len(everything) == 26 and nxt is None
    almost, nxt = await h.store.list_sessions(25, None)
    assert len(almost) == 25 and nxt is not None
    rest, nxt = await h.store.list_sessions(25, nxt)
    assert [r["id"] for r in rest] == ["s00"] and nxt is None
    await h.drain(0)


# leaving and kicking -----------------------------------------------------------


async def test_leave_migrates_host_to_longest_present_and_deletes_with_last(
    store: Harness,
) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.join_session("carol", "s1", None, T0 + 2)

    change = await h.store.leave_session("bob", T0 + 3)
    rec = change.record
    assert (change.session_id, change.ended) == ("s1", None)
    assert ids(rec) == ["alice", "carol"] and rec["host"] == "alice"
    assert rec == await h.store.get_session("s1")
    # bob rejoins, so carol is now present longer than him.
    await h.store.join_session("bob", "s1", None, T0 + 4)
    assert summary(await h.drain(4)) == [
        ("s1", "player_joined", 2), ("s1", "player_joined", 3),
        ("s1", "player_left", 4), ("s1", "player_joined", 5)]

    change = await h.store.leave_session("alice", T0 + 5)
    rec = change.record
    assert change == Change("s1", rec, None)
    assert rec["members"] == [member("carol", T0 + 2), member("bob", T0 + 4)]
    assert (rec["host"], rec["v"], rec["updated"]) == ("carol", 6, T0 + 5)
    assert await h.drain(2) == [
        ("s1", {"e": "player_left", "player_id": "alice", "reason": "left",
                "sid": "s1", "v": 6, "s": bus_view(rec)}),
        ("s1", {"e": "host_changed", "host_id": "carol", "sid": "s1", "v": 6, "s": bus_view(rec)}),
    ]

    change = await h.store.leave_session("carol", T0 + 6)
    rec = change.record
    assert change.ended is None and rec["host"] == "bob" and ids(rec) == ["bob"]
    assert summary(await h.drain(2)) == [("s1", "player_left", 7), ("s1", "host_changed", 7)]

    # The last leave ends the session: the Change carries the final record (no
    # members, one more version), and session_deleted carries that version.
    change = await h.store.leave_session("bob", T0 + 7)
    assert change == Change("s1", ended(rec, T0 + 7, members=[]), "abandoned")
    assert await h.drain(1) == [
        ("s1", {"e": "session_deleted", "sid": "s1", "v": 8, "reason": "left"})]
    assert await h.store.get_session("s1") is None
    assert await open_ids(h) == []
    assert await h.store.stats() == {"open_sessions": 0, "held_seats": 0}

    await fails(ErrorCode.NOT_IN_SESSION, h.store.leave_session("bob", T0 + 8))
    await fails(ErrorCode.NOT_AUTHENTICATED, h.store.leave_session("ghost", T0 + 8))
    # Leaving really freed bob.
    assert (await h.store.create_session("bob", "s2", "", 4, None, T0 + 9))["host"] == "bob"
    await h.drain(0)


async def test_kick(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol", "dave", "erin")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.join_session("carol", "s1", None, T0 + 2)
    await h.store.create_session("dave", "s2", "", 4, None, T0 + 3)
    await h.drain(2)

    await fails(ErrorCode.NOT_HOST, h.store.kick("bob", "carol", T0 + 4))
    err = await fails(ErrorCode.BAD_REQUEST, h.store.kick("alice", "alice", T0 + 4))
    assert err.message == "the host cannot kick themselves"
    err = await fails(ErrorCode.NOT_IN_SESSION, h.store.kick("alice", "dave", T0 + 4))
    assert err.message == "player dave is not in your session"
    await fails(ErrorCode.NOT_IN_SESSION, h.store.kick("alice", "ghost", T0 + 4))
    await fails(ErrorCode.NOT_IN_SESSION, h.store.kick("erin", "bob", T0 + 4))
    await fails(ErrorCode.NOT_AUTHENTICATED, h.store.kick("ghost", "bob", T0 + 4))
    await h.drain(0)

    rec = await h.store.kick("alice", "bob", T0 + 10)
    assert rec["members"] == [member("alice", T0), member("carol", T0 + 2)]
    assert (rec["host"], rec["v"]) == ("alice", 4)
    assert await h.drain(1) == [("s1", {
        "e": "player_left", "player_id": "bob", "reason": "kicked", "sid": "s1", "v": 4,
            "s": bus_view(rec),
    })]

    # The kicked player is free again: he can join another session.
    other = await h.store.join_session("bob", "s2", None, T0 + 11)
    assert ids(other) == ["dave", "bob"]

    await h.store.begin_start("alice", T0 + 12)
    await fails(ErrorCode.SESSION_NOT_WAITING, h.store.kick("alice", "carol", T0 + 13))
    assert summary(await h.drain(1)) == [("s2", "player_joined", 2)]


async def test_kicking_a_disconnected_member_forgets_the_player(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.disconnect("bob", conn("bob"), T0 + 2, HOLD)
    assert (await h.store.stats())["held_seats"] == 1

    await h.store.kick("alice", "bob", T0 + 3)
    assert await h.store.stats() == {"open_sessions": 1, "held_seats": 0}
    assert await h.store.resume("bob", tokh("bob"), conn("bob", "n2"), T0 + 4) is None
    assert await sweep(h, T0 + 10 * HOLD) == []
    assert [(e["e"], e.get("reason")) for _, e in await h.drain(3)] == [
        ("player_joined", None), ("player_disconnected", None), ("player_left", "kicked")]


# starting --------------------------------------------------------------------


async def test_begin_start_is_host_only_and_exactly_once(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)

    await fails(ErrorCode.NOT_HOST, h.store.begin_start("bob", T0 + 2))
    await fails(ErrorCode.NOT_IN_SESSION, h.store.begin_start("carol", T0 + 2))
    await fails(ErrorCode.NOT_AUTHENTICATED, h.store.begin_start("ghost", T0 + 2))

    results = await asyncio.gather(
        h.store.begin_start("alice", T0 + 10), h.store.begin_start("alice", T0 + 10),
        return_exceptions=True,
    )
    started = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, LobbyError)]
    assert len(started) == 1 and len(refused) == 1, results
    assert refused[0].code == ErrorCode.SESSION_NOT_WAITING
    rec = started[0]
    assert (rec["state"], rec["v"], rec["server_id"], rec["updated"], rec["started"]) == (
        "CONNECTING", 3, None, T0 + 10, T0 + 10)
    assert await h.store.get_session("s1") == rec
    # begin_start publishes nothing in either store: only the join is on the channel.
    assert summary(await h.drain(1)) == [("s1", "player_joined", 2)]

    done = await h.store.finish_start("s1", "gs-1", "10.0.0.7:7777", T0 + 20)
    assert done is not None
    assert (done["state"], done["server_id"], done["endpoint"], done["v"], done["started"]) == (
        "CONNECTING", "gs-1", "10.0.0.7:7777", 4, T0 + 10)
    assert await h.drain(1) == [("s1", {
        "e": "session_started", "server_id": "gs-1", "server_endpoint": "10.0.0.7:7777",
        "sid": "s1", "v": 4, "s": bus_view(done),
    })]

    assert await h.store.finish_start("s1", "gs-2", "10.0.0.8:7777", T0 + 21) is None
    assert await h.store.fail_start("s1", "NO_SERVER_AVAILABLE", "late", T0 + 22, HOLD) is None
    assert await h.store.get_session("s1") == done
    assert await h.store.finish_start("nope", "gs-1", "x:1", T0 + 23) is None
    assert await h.store.fail_start("nope", "NO_SERVER_AVAILABLE", "x", T0 + 23, HOLD) is None
    await h.drain(0)


async def test_fail_start_returns_to_waiting(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    # Neither applies to a session that is not starting.
    assert await h.store.finish_start("s1", "gs-1", "x:1", T0 + 2) is None
    assert await h.store.fail_start("s1", "NO_SERVER_AVAILABLE", "x", T0 + 2, HOLD) is None

    assert (await h.store.begin_start("alice", T0 + 3))["started"] == T0 + 3
    back = await h.store.fail_start(
        "s1", ErrorCode.NO_SERVER_AVAILABLE, "no game server is available", T0 + 4, HOLD)
    assert back is not None
    assert (back["state"], back["v"], back["server_id"], back["endpoint"], back["updated"]) == (
        "WAITING", 4, None, None, T0 + 4)
    # started is set by begin_start and cleared again by the failure.
    assert back["started"] is None
    assert await h.store.get_session("s1") == back
    assert (await h.drain(2))[1] == ("s1", {
        "e": "session_start_failed",
        "error": {"code": "NO_SERVER_AVAILABLE", "message": "no game server is available"},
        "sid": "s1", "v": 4, "s": bus_view(back),
    })
    assert await h.store.fail_start("s1", "NO_SERVER_AVAILABLE", "again", T0 + 5, HOLD) is None

    again = await h.store.begin_start("alice", T0 + 6)
    assert (again["state"], again["v"], again["started"]) == ("CONNECTING", 5, T0 + 6)
    await h.drain(0)


async def test_capacity_race(store: Harness) -> None:
    h = store
    joiners = [f"j{i:02d}" for i in range(40)]
    await add_players(h, "host", *joiners)
    await h.store.create_session("host", "s1", "", 8, None, T0)

    results = await asyncio.gather(
        *(h.store.join_session(pid, "s1", None, T0 + 100) for pid in joiners),
        return_exceptions=True,
    )
    winners = {pid: r for pid, r in zip(joiners, results, strict=True) if isinstance(r, dict)}
    losers = [r for r in results if not isinstance(r, dict)]
    assert len(winners) == 7, results
    assert len(losers) == 33
    assert all(isinstance(e, LobbyError) and e.code == ErrorCode.SESSION_FULL for e in losers)

    final = await h.store.get_session("s1")
    assert final is not None and len(final["members"]) == 8 and final["v"] == 8
    assert set(ids(final)) == {"host", *winners}
    assert "s1" not in await open_ids(h)

    events = await h.drain(7)
    versions = [ev["v"] for _, ev in events]
    assert versions == list(range(2, 9))
    assert [ev["player_id"] for _, ev in events] == ids(final)[1:]
    for _, ev in events:
        assert ev["e"] == "player_joined" and len(ev["s"]["members"]) == ev["v"]
        assert bus_view(winners[ev["player_id"]]) == ev["s"]
    # A refused join leaves no trace: a loser is still free to create a session.
    loser = next(pid for pid in joiners if pid not in winners)
    assert (await h.store.create_session(loser, "s2", "", 4, None, T0 + 200))["host"] == loser


# seat holds ------------------------------------------------------------------


async def test_seat_hold_expires_and_moves_host(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    before = await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.drain(1)

    held = await h.store.disconnect("alice", conn("alice"), T0 + 10, HOLD)
    # The seat is held and marked so (player_disconnected), the rest unchanged.
    dropped = {**before["members"][0], "off": T0 + 10 + HOLD}
    assert held == {**before, "members": [dropped, before["members"][1]], "v": 3,
                    "updated": T0 + 10}
    assert (await h.store.stats())["held_seats"] == 1
    assert await sweep(h, T0 + 10 + HOLD - 1) == []
    assert await h.store.get_session("s1") == held
    assert await h.drain(1) == [
        ("s1", {"e": "player_disconnected", "player_id": "alice",
                "hold_until": (T0 + 10 + HOLD) / 1000, "sid": "s1", "v": 3, "s": bus_view(held)})]

    changes = await sweep(h, T0 + 10 + HOLD)
    after = await h.store.get_session("s1")
    assert after is not None
    assert changes == [Change("s1", after, None)]
    assert (ids(after), after["host"], after["v"], after["updated"]) == (
        ["bob"], "bob", 4, T0 + 10 + HOLD)
    assert await h.drain(2) == [
        ("s1", {"e": "player_left", "player_id": "alice", "reason": "timeout",
                "sid": "s1", "v": 4, "s": bus_view(after)}),
        ("s1", {"e": "host_changed", "host_id": "bob", "sid": "s1", "v": 4, "s": bus_view(after)}),
    ]
    assert (await h.store.stats())["held_seats"] == 0
    # The player went with the seat: the old token resumes nothing.
    assert await h.store.resume("alice", tokh("alice"), conn("alice", "n2"), T0 + HOLD + 20) is None
    assert await sweep(h, T0 + 100 * HOLD) == []
    await h.drain(0)


async def test_seat_hold_of_last_member_deletes_session(store: Harness) -> None:
    h = store
    await add_players(h, "alice")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    rec = await h.store.disconnect("alice", conn("alice"), T0 + 10, HOLD)
    assert rec is not None
    final = ended(rec, T0 + 10 + HOLD, members=[])
    assert await sweep(h, T0 + 10 + HOLD) == [Change("s1", final, "abandoned")]
    assert (await h.drain(2))[1] == (
        "s1", {"e": "session_deleted", "sid": "s1", "v": 3, "reason": "timeout"})
    assert await h.store.get_session("s1") is None
    assert await h.store.stats() == {"open_sessions": 0, "held_seats": 0}


async def test_sweep_takes_due_holds_in_deadline_order_up_to_limit(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol", "dave")
    await h.store.create_session("alice", "s1", "", 5, None, T0)
    for pid in ("bob", "carol", "dave"):
        await h.store.join_session(pid, "s1", None, T0 + 1)
    await h.drain(3)
    await h.store.disconnect("dave", conn("dave"), T0 + 10, HOLD)
    await h.store.disconnect("carol", conn("carol"), T0 + 20, HOLD)
    await h.store.disconnect("bob", conn("bob"), T0 + 20, HOLD)

    first = await sweep(h, T0 + 20 + HOLD, limit=2)
    assert [ids(c.record) for c in first] == [["alice", "bob", "carol"], ["alice", "carol"]]
    second = await sweep(h, T0 + 20 + HOLD, limit=2)
    assert [ids(c.record) for c in second] == [["alice"]]
    # Equal deadlines are taken in player-id order in both stores.
    assert [ev["player_id"] for _, ev in await h.drain(6) if ev["e"] == "player_left"] == [
        "dave", "bob", "carol"]


async def test_concurrent_sweeps_take_each_expired_hold_once(store: Harness) -> None:
    # Every node sweeps; a hold taken twice would publish player_left twice.
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.disconnect("bob", conn("bob"), T0 + 10, HOLD)
    results = await asyncio.gather(*(sweep(h, T0 + 10 + HOLD) for _ in range(5)))
    assert sorted(len(r) for r in results) == [0, 0, 0, 0, 1]
    assert summary(await h.drain(3)) == [
        ("s1", "player_joined", 2), ("s1", "player_disconnected", 3), ("s1", "player_left", 4)]


async def test_resume_before_deadline_cancels_hold(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.disconnect("bob", conn("bob"), T0 + 10, HOLD)

    res = await h.store.resume("bob", tokh("bob"), conn("bob", "n2"), T0 + 10 + HOLD - 1)
    session = await h.store.get_session("s1")
    assert res == ResumeResult(PlayerInfo("bob", "Bob", "s1"), session, True)
    assert session is not None and "off" not in session["members"][1]
    assert (await h.store.stats())["held_seats"] == 0
    assert await sweep(h, T0 + 100 * HOLD) == []
    assert await h.store.get_session("s1") == session
    # The dropped socket's conn was cleared, so nobody is told "replaced"; the
    # others hear that bob is back.
    events = await h.drain(3)
    assert summary(events) == [("s1", "player_joined", 2), ("s1", "player_disconnected", 3),
                               ("s1", "player_reconnected", 4)]
    assert events[2][1] == {"e": "player_reconnected", "player_id": "bob", "sid": "s1", "v": 4,
                            "s": bus_view(session)}


async def test_disconnect_of_a_stale_conn_is_a_no_op(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.resume("bob", tokh("bob"), conn("bob", "n2"), T0 + 2)
    # The old socket's close is reported after the player moved on.
    await h.store.disconnect("bob", conn("bob", "n1"), T0 + 3, HOLD)
    assert (await h.store.stats())["held_seats"] == 0
    assert await sweep(h, T0 + 100 * HOLD) == []
    assert ids(await h.store.get_session("s1") or {"members": []}) == ["alice", "bob"]
    # Still bound to n2: resuming there again is silent.
    res = await h.store.resume("bob", tokh("bob"), conn("bob", "n2"), T0 + 4)
    assert res is not None and res.player.session_id == "s1"
    got = summary(await h.drain(2))
    if h.kind == "cluster":  # a session's and a node's channel: two slots, no common order
        got.sort(key=lambda e: e[0] != "s1")
    assert got == [("s1", "player_joined", 2), ("node:n1", "replaced", None)]


async def test_no_seat_expiry_while_connecting_but_again_after_fail_start(
    store: Harness,
) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.begin_start("alice", T0 + 5)
    await h.store.disconnect("bob", conn("bob"), T0 + 10, HOLD)
    assert (await h.store.stats())["held_seats"] == 0
    assert await sweep(h, T0 + 100 * HOLD) == []
    assert ids(await h.store.get_session("s1") or {"members": []}) == ["alice", "bob"]

    back = await h.store.fail_start("s1", "NO_SERVER_AVAILABLE", "none", T0 + 50, HOLD)
    assert back is not None and back["state"] == "WAITING"
    # Only the disconnected member is held again; alice is still connected.
    assert (await h.store.stats())["held_seats"] == 1
    assert await sweep(h, T0 + 50 + HOLD - 1) == []
    changes = await sweep(h, T0 + 50 + HOLD)
    after = await h.store.get_session("s1")
    assert after is not None and ids(after) == ["alice"]
    assert changes == [Change("s1", after, None)]
    events = await h.drain(4)
    assert summary(events) == [
        ("s1", "player_joined", 2), ("s1", "player_disconnected", 4),
        ("s1", "session_start_failed", 5), ("s1", "player_left", 6)]
    # While CONNECTING the seat is held for the session's life: no deadline; back
    # in WAITING the hold runs again, and the session object says until when.
    assert events[1][1]["hold_until"] is None and events[1][1]["s"]["members"][1]["off"] == 0
    assert events[2][1]["s"]["members"][1]["off"] == T0 + 50 + HOLD
    assert events[3][1]["reason"] == "timeout"


async def test_begin_start_ends_pending_holds(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.disconnect("bob", conn("bob"), T0 + 10, HOLD)
    assert (await h.store.stats())["held_seats"] == 1
    await h.store.begin_start("alice", T0 + 20)
    assert (await h.store.stats())["held_seats"] == 0
    assert await sweep(h, T0 + 10 + HOLD) == []
    rec = await h.store.get_session("s1")
    assert rec is not None and ids(rec) == ["alice", "bob"]
    # Still dropped, now held for the session's life.
    assert rec["members"][1]["off"] == 0
    await h.drain(2)


# resume ----------------------------------------------------------------------


async def test_resume(store: Harness) -> None:
    h = store
    await add_players(h, "alice")
    assert await h.store.resume("alice", "wrong", conn("alice", "n2"), T0 + 1) is None
    assert await h.store.resume("ghost", tokh("ghost"), conn("ghost", "n2"), T0 + 1) is None
    await h.drain(0)

    res = await h.store.resume("alice", tokh("alice"), conn("alice", "n2"), T0 + 2)
    assert res == ResumeResult(PlayerInfo("alice", "Alice", None), None)
    assert await h.drain(1) == [
        ("node:n1", {"e": "replaced", "player_id": "alice", "conn": "n1.alice"})]
    # Rebinding to the conn it already has tells nobody.
    await h.store.resume("alice", tokh("alice"), conn("alice", "n2"), T0 + 3)
    await h.drain(0)

    rec = await h.store.create_session("alice", "s1", "", 4, None, T0 + 4)
    res = await h.store.resume("alice", tokh("alice"), conn("alice", "n3"), T0 + 5)
    assert res == ResumeResult(PlayerInfo("alice", "Alice", "s1"), rec)
    assert await h.drain(1) == [
        ("node:n2", {"e": "replaced", "player_id": "alice", "conn": "n2.alice"})]


async def test_resume_tells_a_node_whose_id_contains_a_dot(store: Harness) -> None:
    # server.py forms conn ids as f"{node_id}.{counter}" and --node-id is free
    # text, so only the last dot separates the node from the counter; a node
    # "eu.west" subscribes to "node:eu.west", and "node:eu" reaches nobody.
    h = store
    await h.store.new_player("alice", "Alice", tokh("alice"), "eu.west.7", T0)
    await h.store.resume("alice", tokh("alice"), "eu.west.8", T0 + 1)
    assert await h.drain(1) == [
        ("node:eu.west", {"e": "replaced", "player_id": "alice", "conn": "eu.west.7"})]


async def test_sessionless_disconnected_player_expires(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    # 1 ms, because Redis expires the key on its own clock (PX), not on `now`.
    await h.store.disconnect("alice", conn("alice"), T0, 1)
    await sweep(h, T0 + 5)
    await h.until_player_expired("alice")
    assert await h.store.resume("alice", tokh("alice"), conn("alice", "n2"), T0 + 5) is None
    await fails(ErrorCode.NOT_AUTHENTICATED, h.store.create_session("alice", "s1", "", 4, None, T0))

    # Resumed in time, the record loses its expiry for good.
    await h.store.disconnect("bob", conn("bob"), T0, 60_000)
    res = await h.store.resume("bob", tokh("bob"), conn("bob", "n2"), T0 + 1_000)
    assert res == ResumeResult(PlayerInfo("bob", "Bob", None), None)
    assert await sweep(h, T0 + 100 * 60_000) == []
    if isinstance(h, RedisHarness):
        assert await h.client.pttl(h.store.keys.player("bob")) == -1
    later = await h.store.resume("bob", tokh("bob"), conn("bob", "n3"), T0 + 100 * 60_000)
    assert later is not None and later.player.player_id == "bob"
    assert summary(await h.drain(1)) == [("node:n2", "replaced", None)]


async def test_no_secret_travels_on_the_bus(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, PW, T0)
    await h.store.join_session("bob", "s1", PW, T0 + 1)
    await h.store.update_session("alice", {"name": "x"}, T0 + 2)
    await h.store.disconnect("bob", conn("bob"), T0 + 3, HOLD)
    events = await h.drain(3)
    text = json.dumps(events)
    for secret in (PW["hash"], PW["salt"], tokh("alice"), tokh("bob"), conn("bob")):
        assert secret not in text
    assert all(ev["s"]["pw"] == {} for _, ev in events)  # has_password survives


# isolation -------------------------------------------------------------------


async def test_events_of_two_sessions_never_cross(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol", "dave")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.create_session("bob", "s2", "", 4, None, T0 + 1)
    await h.store.join_session("carol", "s1", None, T0 + 2)
    await h.store.join_session("dave", "s2", None, T0 + 3)
    await h.store.leave_session("carol", T0 + 4)
    await h.store.kick("bob", "dave", T0 + 5)
    await h.store.resume("alice", tokh("alice"), conn("alice", "n2"), T0 + 6)
    await h.store.leave_session("alice", T0 + 7)

    events = await h.drain(6)
    for channel, ev in events:
        if channel.startswith("node:"):
            assert "sid" not in ev
        else:
            assert channel == ev["sid"]
            assert "s" not in ev or ev["s"]["id"] == channel
    seen = [(ch, ev["e"], ev.get("player_id")) for ch, ev in events]
    if h.kind == "cluster":
        # Each session's channel is on its own slot (a master's connection): events
        # keep their order within a channel only.
        seen.sort(key=lambda e: e[0])
    assert seen == sorted(SIX, key=lambda e: e[0]) if h.kind == "cluster" else SIX


SIX = [
    ("s1", "player_joined", "carol"), ("s2", "player_joined", "dave"),
    ("s1", "player_left", "carol"), ("s2", "player_left", "dave"),
    ("node:n1", "replaced", "alice"), ("s1", "session_deleted", None),
]


# the match: mark_in_progress and complete --------------------------------------


async def session_in(
    h: Harness, state: str, sid: str, host: str, *others: str, now: int = T0
) -> SessionRecord:
    """A session of host and others, brought to `state` at now .. now + 3."""
    rec = await h.store.create_session(host, sid, "", 4, None, now)
    for pid in others:
        rec = await h.store.join_session(pid, sid, None, now)
    if state in ("CONNECTING", "IN_PROGRESS"):
        rec = await h.store.begin_start(host, now + 1)
    if state == "IN_PROGRESS":
        await h.store.finish_start(sid, f"gs-{sid}", "10.0.0.7:7777", now + 2)
        rec = await h.store.mark_in_progress(sid, now + 3)
    assert rec["state"] == state
    return rec


async def test_mark_in_progress(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.drain(1)

    # A waiting session has no game server that could report in.
    err = await fails(ErrorCode.BAD_REQUEST, h.store.mark_in_progress("s1", T0 + 2))
    assert isinstance(err, StateConflict)
    await fails(ErrorCode.SESSION_NOT_FOUND, h.store.mark_in_progress("nope", T0 + 2))
    assert (await h.store.get_session("s1") or {})["v"] == 2
    await h.drain(0)

    await h.store.begin_start("alice", T0 + 10)
    done = await h.store.finish_start("s1", "gs-1", "10.0.0.7:7777", T0 + 20)
    assert done is not None
    await h.drain(1)
    rec = await h.store.mark_in_progress("s1", T0 + 30)
    assert rec == {
        **done, "state": "IN_PROGRESS", "v": 5, "updated": T0 + 30, "active": T0 + 30}
    assert (rec["started"], rec["server_id"]) == (T0 + 10, "gs-1")
    assert await h.store.get_session("s1") == rec
    assert await h.drain(1) == [
        ("s1", {"e": "session_in_progress", "sid": "s1", "v": 5, "s": bus_view(rec)})]

    # A retried callback is harmless: same record, no version, no event.
    assert await h.store.mark_in_progress("s1", T0 + 40) == rec
    assert await h.store.get_session("s1") == rec
    await h.drain(0)

    # A running match takes no start transition, join or kick, and is not listed.
    assert await h.store.finish_start("s1", "gs-2", "x:1", T0 + 41) is None
    assert await h.store.fail_start("s1", "NO_SERVER_AVAILABLE", "x", T0 + 41, HOLD) is None
    await fails(ErrorCode.SESSION_NOT_WAITING, h.store.begin_start("alice", T0 + 41))
    await fails(ErrorCode.SESSION_NOT_WAITING, h.store.join_session("carol", "s1", None, T0 + 41))
    await fails(ErrorCode.SESSION_NOT_WAITING, h.store.kick("alice", "bob", T0 + 41))
    assert await open_ids(h) == []
    # Seats of a running match are held for its life: a dropped member keeps his.
    held = await h.store.disconnect("bob", conn("bob"), T0 + 50, HOLD)
    assert held is not None and held["members"][1]["off"] == 0
    assert await h.store.stats() == {"open_sessions": 0, "held_seats": 0}
    assert await sweep(h, T0 + 100 * HOLD) == []
    assert await h.store.get_session("s1") == held
    assert summary(await h.drain(1)) == [("s1", "player_disconnected", 6)]


async def test_complete_ends_a_running_match(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol")
    await session_in(h, "IN_PROGRESS", "s1", "alice", "bob", "carol")
    rec = await h.store.disconnect("carol", conn("carol"), T0 + 40, HOLD)
    assert rec is not None
    await h.drain()

    change = await h.store.complete("s1", "completed", T0 + 50)
    final = ended(rec, T0 + 50)
    # The final record still names who played; the session itself is gone.
    assert change == Change("s1", final, "completed")
    assert ids(final) == ["alice", "bob", "carol"] and final["state"] == "IN_PROGRESS"
    assert await h.drain(1) == [("s1", {
        "e": "session_closed", "reason": "completed", "sid": "s1", "v": final["v"],
            "s": bus_view(final),
    })]
    assert await h.store.get_session("s1") is None
    await fails(ErrorCode.SESSION_NOT_FOUND, h.store.complete("s1", "completed", T0 + 51))
    await fails(ErrorCode.SESSION_NOT_FOUND, h.store.complete("nope", "completed", T0 + 51))
    await fails(ErrorCode.SESSION_NOT_FOUND, h.store.mark_in_progress("s1", T0 + 51))
    assert await h.store.finish_start("s1", "gs-2", "x:1", T0 + 51) is None
    await h.drain(0)

    # carol had dropped: she goes with the session.
    assert await h.store.resume("carol", tokh("carol"), conn("carol", "n2"), T0 + 52) is None
    await fails(ErrorCode.NOT_AUTHENTICATED, h.store.create_session("carol", "s9", "", 4, None, T0))
    # alice and bob are still connected: in no session, free to create and join.
    await fails(ErrorCode.NOT_IN_SESSION, h.store.leave_session("alice", T0 + 53))
    await h.store.create_session("bob", "s2", "", 4, None, T0 + 54)
    again = await h.store.join_session("alice", "s2", None, T0 + 55)
    assert ids(again) == ["bob", "alice"]
    assert await open_ids(h) == ["s2"]
    assert await h.store.stats() == {"open_sessions": 1, "held_seats": 0}
    assert summary(await h.drain(1)) == [("s2", "player_joined", 2)]


async def test_complete_in_any_state_releases_seats_and_unlists(store: Harness) -> None:
    h = store
    for i, state in enumerate(("WAITING", "CONNECTING", "IN_PROGRESS")):
        host, dropped, sid, now = f"h{i}", f"d{i}", f"s{i}", T0 + 1000 * i
        await add_players(h, host, dropped, now=now)
        await session_in(h, state, sid, host, dropped, now=now)
        rec = await h.store.disconnect(dropped, conn(dropped), now + 10, HOLD)
        assert rec is not None
        assert (await h.store.stats())["held_seats"] == (1 if state == "WAITING" else 0)
        assert (sid in await open_ids(h)) == (state == "WAITING")
        await h.drain()

        change = await h.store.complete(sid, "cancelled", now + 20)
        assert change == Change(sid, ended(rec, now + 20), "cancelled")
        assert [(ch, ev["e"], ev["reason"]) for ch, ev in await h.drain(1)] == [
            (sid, "session_closed", "cancelled")]
        assert await h.store.get_session(sid) is None
        assert await open_ids(h) == []
        assert await h.store.stats() == {"open_sessions": 0, "held_seats": 0}
        assert await h.store.resume(dropped, tokh(dropped), conn(dropped, "n2"), now + 30) is None
        # A late start callback finds nothing to act on.
        assert await h.store.finish_start(sid, "gs-x", "x:1", now + 30) is None
        assert await h.store.fail_start(sid, "NO_SERVER_AVAILABLE", "x", now + 30, HOLD) is None
        # The hold ended with the session: sweeping later changes nothing.
        assert await sweep(h, now + 10 + HOLD) == []
        assert (await h.store.create_session(host, f"n{i}", "", 4, None, now + 40))["host"] == host
        await h.store.leave_session(host, now + 41)
        await h.drain(1)


# game servers: get_session_by_server -------------------------------------------


async def test_session_by_server_follows_the_session(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol")
    assert await h.store.get_session_by_server("gs-1") is None
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.join_session("carol", "s1", None, T0 + 1)
    await h.store.begin_start("alice", T0 + 2)
    # Starting, but no server recorded yet.
    assert await h.store.get_session_by_server("gs-1") is None
    done = await h.store.finish_start("s1", "gs-1", "10.0.0.7:7777", T0 + 3)
    assert done is not None
    assert await h.store.get_session_by_server("gs-1") == done
    assert await h.store.get_session_by_server("gs-2") is None
    assert await h.store.get_session_by_server("s1") is None  # a session id is no server id
    # Always the session as it is now.
    running = await h.store.mark_in_progress("s1", T0 + 4)
    assert await h.store.get_session_by_server("gs-1") == running
    left = (await h.store.leave_session("carol", T0 + 5)).record
    assert await h.store.get_session_by_server("gs-1") == left
    await h.store.complete("s1", "completed", T0 + 6)
    assert await h.store.get_session_by_server("gs-1") is None

    # A failed start leaves no server behind.
    await h.store.create_session("alice", "s2", "", 4, None, T0 + 7)
    await h.store.begin_start("alice", T0 + 8)
    await h.store.fail_start("s2", "NO_SERVER_AVAILABLE", "x", T0 + 9, HOLD)
    assert await h.store.get_session_by_server("gs-1") is None
    await h.drain()


async def start_on(h: Harness, sid: str, host: str, server_id: str, now: int) -> SessionRecord:
    await h.store.create_session(host, sid, "", 4, None, now)
    await h.store.begin_start(host, now + 1)
    rec = await h.store.finish_start(sid, server_id, "10.0.0.7:7777", now + 2)
    assert rec is not None
    return rec


async def test_a_reused_server_serves_its_latest_session(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol", "dave")
    await start_on(h, "s1", "alice", "gs-1", T0)
    s2 = await start_on(h, "s2", "bob", "gs-1", T0 + 10)
    assert await h.store.get_session_by_server("gs-1") == s2
    # The earlier session ending must not take the later one's entry with it.
    await h.store.complete("s1", "completed", T0 + 20)
    assert await h.store.get_session_by_server("gs-1") == s2
    # Every way a session ends removes its own entry: the last member leaving...
    assert (await h.store.leave_session("bob", T0 + 21)).ended == "abandoned"
    assert await h.store.get_session_by_server("gs-1") is None
    # ...and a timeout.
    s3 = await start_on(h, "s3", "carol", "gs-1", T0 + 30)
    await start_on(h, "s4", "dave", "gs-2", T0 + 30 + TO.connecting_ms)
    assert await h.store.get_session_by_server("gs-1") == s3
    changes = await sweep(h, T0 + 31 + TO.connecting_ms, TO)
    assert [(c.session_id, c.ended) for c in changes] == [("s3", "server_timeout")]
    assert await h.store.get_session_by_server("gs-1") is None
    assert (await h.store.get_session_by_server("gs-2") or {"id": None})["id"] == "s4"
    await h.drain()


# session timeouts --------------------------------------------------------------


async def test_idle_waiting_session_closes_at_its_deadline(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    # bob drops with a hold longer than the idle window: the session ends first.
    rec = await h.store.disconnect("bob", conn("bob"), T0 + 2, 10 * TO.idle_ms)
    assert rec is not None
    await h.drain(2)

    for t in (T0, T0 + TO.connecting_ms, T0 + TO.idle_ms, T0 + 1 + TO.idle_ms - 1):
        assert await sweep(h, t, TO) == [], t
    assert await h.store.get_session("s1") == rec
    await h.drain(0)

    changes = await sweep(h, T0 + 1 + TO.idle_ms, TO)
    final = ended(rec, T0 + 1 + TO.idle_ms)
    assert changes == [Change("s1", final, "idle")]
    assert await h.drain(1) == [("s1", {
        "e": "session_closed", "reason": "idle", "sid": "s1", "v": 4, "s": bus_view(final)})]
    assert await h.store.get_session("s1") is None
    assert await h.store.stats() == {"open_sessions": 0, "held_seats": 0}
    assert await sweep(h, T0 + 10 * TO.idle_ms, TO) == []
    # The dropped member went with it; the connected host is free.
    assert await h.store.resume("bob", tokh("bob"), conn("bob", "n2"), T0 + TO.idle_ms + 5) is None
    assert (await h.store.create_session("alice", "s2", "", 4, None, T0 + TO.idle_ms + 6))["v"] == 1
    await h.drain(0)


async def test_activity_pushes_the_idle_deadline_later(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    s = h.store
    # Each of these is activity, less than an idle window after the one before.
    activity = {
        40_000: lambda t: s.join_session("bob", "s1", None, t),
        90_000: lambda t: s.leave_session("bob", t),
        140_000: lambda t: s.join_session("carol", "s1", None, t),
        145_000: lambda t: s.kick("alice", "carol", t),
        # CONNECTING for less than its window, then back to WAITING.
        190_000: lambda t: s.begin_start("alice", t),
        205_000: lambda t: s.fail_start("s1", "NO_SERVER_AVAILABLE", "x", t, HOLD),
    }
    last = 205_000
    for dt in range(0, last + TO.idle_ms, 2_500):
        if dt in activity:
            await activity[dt](T0 + dt)
        assert await sweep(h, T0 + dt, TO) == [], dt
    assert await sweep(h, T0 + last + TO.idle_ms - 1, TO) == []
    rec = await h.store.get_session("s1")
    assert rec is not None and rec["active"] == T0 + last and ids(rec) == ["alice"]

    changes = await sweep(h, T0 + last + TO.idle_ms, TO)
    assert changes == [Change("s1", ended(rec, T0 + last + TO.idle_ms), "idle")]
    events = await h.drain(6)
    assert [(ev["e"], ev.get("reason")) for _, ev in events] == [
        ("player_joined", None), ("player_left", "left"), ("player_joined", None),
        ("player_left", "kicked"), ("session_start_failed", None), ("session_closed", "idle")]


async def test_connecting_session_times_out_from_started(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol", "dan")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.join_session("dan", "s1", None, T0 + 1)
    # Started just before it would have gone idle: the CONNECTING window counts now.
    start = T0 + 1 + TO.idle_ms - 1
    await h.store.begin_start("alice", start)
    await h.store.disconnect("bob", conn("bob"), start + 5, HOLD)
    # A server was allocated but never reported in.
    await h.store.finish_start("s1", "gs-1", "10.0.0.7:7777", start + 10)
    # A leave is activity, but the CONNECTING window runs from begin_start.
    rec = (await h.store.leave_session("dan", start + 15)).record
    assert (rec["started"], rec["active"]) == (start, start + 15)
    for t in (T0 + 1 + TO.idle_ms, start + TO.connecting_ms - 1):
        assert await sweep(h, t, TO) == [], t

    changes = await sweep(h, start + TO.connecting_ms, TO)
    final = ended(rec, start + TO.connecting_ms)
    assert changes == [Change("s1", final, "server_timeout")]
    assert (await h.drain(6))[-1] == ("s1", {
        "e": "session_closed", "reason": "server_timeout", "sid": "s1", "v": final["v"],
        "s": bus_view(final)})
    assert await h.store.resume("bob", tokh("bob"), conn("bob", "n2"), start + 10**6) is None
    await h.store.create_session("alice", "s2", "", 4, None, start + 10**6)

    # A failed start and a second try: the window runs from the second begin_start.
    await h.store.create_session("carol", "s3", "", 4, None, T0)
    await h.store.begin_start("carol", T0 + 1_000)
    await h.store.fail_start("s3", "NO_SERVER_AVAILABLE", "x", T0 + 10_000, HOLD)
    again = await h.store.begin_start("carol", T0 + 15_000)
    assert again["started"] == T0 + 15_000
    for t in (T0 + 1_000 + TO.connecting_ms, T0 + 15_000 + TO.connecting_ms - 1):
        assert [c.session_id for c in await sweep(h, t, TO)] == [], t
    changes = await sweep(h, T0 + 15_000 + TO.connecting_ms, TO)
    assert [(c.session_id, c.ended) for c in changes] == [("s3", "server_timeout")]
    assert summary(await h.drain(2)) == [
        ("s3", "session_start_failed", 3), ("s3", "session_closed", 5)]


async def test_in_progress_session_expires_from_mark_in_progress(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    joined = await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.begin_start("alice", T0 + 2)
    # The game server reports in just before the connecting window closes.
    running = T0 + 2 + TO.connecting_ms - 1
    rec = await h.store.mark_in_progress("s1", running)
    assert rec["active"] == running
    for t in (T0 + 2 + TO.connecting_ms, T0 + 1 + TO.idle_ms, running + TO.in_progress_ms - 1):
        assert await sweep(h, t, TO) == [], t
    assert await h.store.get_session("s1") == rec

    changes = await sweep(h, running + TO.in_progress_ms, TO)
    final = ended(rec, running + TO.in_progress_ms)
    assert changes == [Change("s1", final, "expired")]
    assert await h.drain(3) == [
        ("s1", {"e": "player_joined", "player_id": "bob", "name": "Bob", "sid": "s1", "v": 2,
                "s": bus_view(joined)}),
        ("s1", {"e": "session_in_progress", "sid": "s1", "v": 4, "s": bus_view(rec)}),
        ("s1", {"e": "session_closed", "reason": "expired", "sid": "s1", "v": 5,
            "s": bus_view(final)}),
    ]
    assert await h.store.get_session("s1") is None
    # Both players were connected: both are free again.
    for pid in ("alice", "bob"):
        await h.store.create_session(pid, f"{pid}-2", "", 4, None, running + TO.in_progress_ms)


async def test_concurrent_sweeps_close_each_timed_out_session_once(store: Harness) -> None:
    # Every node sweeps; a session closed twice would publish session_closed twice.
    h = store
    states = ("WAITING", "CONNECTING", "IN_PROGRESS")
    expected = {}
    for i in range(12):
        state = states[i % 3]
        host, sid = f"p{i:02d}", f"s{i:02d}"
        await add_players(h, host)
        await session_in(h, state, sid, host, now=T0 + i)
        expected[sid] = {"WAITING": "idle", "CONNECTING": "server_timeout",
                         "IN_PROGRESS": "expired"}[state]
    await add_players(h, "fresh")
    now = T0 + 20 + TO.in_progress_ms
    await h.store.create_session("fresh", "s-fresh", "", 4, None, now - 1)
    await h.drain()

    # With a small limit, several sweeps must each take their own share.
    results = await asyncio.gather(*(sweep(h, now, TO, limit=2) for _ in range(10)))
    taken = [(c.session_id, c.ended) for r in results for c in r]
    assert sorted(taken) == sorted(expected.items())
    # The limit is per bucket (the cluster store has 8).
    assert all(len(r) <= 2 * h.buckets for r in results)
    events = await h.drain(12)
    assert sorted((ch, ev["e"], ev["reason"]) for ch, ev in events) == sorted(
        (sid, "session_closed", reason) for sid, reason in expected.items())
    assert await sweep(h, now, TO) == []
    assert await open_ids(h) == ["s-fresh"]


# rebuilding an emptied Redis: restore and rebind ---------------------------------


async def persisted(h: RedisHarness) -> tuple[RedisStore, str]:
    """Another generation of the store (its own prefix) to take records from."""
    prefix = f"src-{uuid.uuid4().hex[:8]}:"
    return RedisStore(h.client, prefix), prefix


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_restore_then_resume_with_the_original_token(store: Harness) -> None:
    h = store
    assert isinstance(h, RedisHarness)
    src, _ = await persisted(h)
    for pid in ("alice", "bob", "carol", "dave", "erin", "x1", "x2", "x3"):
        await src.new_player(pid, name(pid), tokh(pid), conn(pid), T0)
    # Throw-away sessions push the counter up, so that "above" means something.
    for pid in ("x1", "x2", "x3"):
        await src.create_session(pid, f"t-{pid}", "", 4, None, T0)
        await src.leave_session(pid, T0)
    await src.create_session("alice", "s1", "", 4, None, T0 + 1)
    waiting = await src.join_session("bob", "s1", None, T0 + 2)
    await src.create_session("carol", "s2", "", 4, None, T0 + 3)
    await src.join_session("dave", "s2", None, T0 + 4)
    await src.begin_start("carol", T0 + 5)
    await src.finish_start("s2", "gs-1", "10.0.0.7:7777", T0 + 6)
    running = await src.mark_in_progress("s2", T0 + 7)
    await src.create_session("erin", "s3", "", 4, None, T0 + 8)
    connecting = await src.begin_start("erin", T0 + 9)
    records = [waiting, running, connecting]
    assert [r["seq"] for r in records] == [4, 5, 6]
    assert all("tokh" in m for r in records for m in r["members"])

    # The store under test sits on a flushed db: no epoch, nobody to resume.
    t1 = T0 + 1_000
    assert await sweep(h, t1) == []
    assert await h.store.resume("alice", tokh("alice"), conn("alice", "n2"), t1) is None
    assert await h.store.restore("gen-1", records, HOLD, t1) == ("gen-1", 3)
    h.epoch = "gen-1"
    assert await sweep(h, t1 + 1) == []
    for rec in records:
        assert await h.store.get_session(rec["id"]) == rec
    assert await open_ids(h) == ["s1"]
    # Waiting members hold their seats as if they had just dropped; seats of a
    # started session are held for its life.
    assert await h.store.stats() == {"open_sessions": 1, "held_seats": 2}

    assert await h.store.resume("alice", tokh("bob"), conn("alice", "n2"), t1 + 2) is None
    res = await h.store.resume("alice", tokh("alice"), conn("alice", "n2"), t1 + 2)
    assert res == ResumeResult(PlayerInfo("alice", "Alice", "s1"), waiting)
    res = await h.store.resume("dave", tokh("dave"), conn("dave", "n2"), t1 + 3)
    assert res == ResumeResult(PlayerInfo("dave", "Dave", "s2"), running)
    res = await h.store.resume("erin", tokh("erin"), conn("erin", "n2"), t1 + 4)
    assert res == ResumeResult(PlayerInfo("erin", "Erin", "s3"), connecting)
    assert (await h.store.stats())["held_seats"] == 1
    # Restored players are players like any other: carol's match goes on.
    assert (await h.store.complete("s2", "completed", t1 + 5)).ended == "completed"
    # bob did not come back: his hold runs out like any other.
    changes = await sweep(h, t1 + HOLD)
    after = await h.store.get_session("s1")
    assert after is not None and ids(after) == ["alice"]
    assert changes == [Change("s1", after, None)]
    assert summary(await h.drain(2)) == [("s2", "session_closed", 6), ("s1", "player_left", 3)]
    assert await h.store.resume("bob", tokh("bob"), conn("bob", "n2"), t1 + HOLD + 1) is None

    # Another node (or a retry) gets the existing epoch and restores nothing.
    assert await h.store.restore("gen-2", records, HOLD, t1 + HOLD + 2) == ("gen-1", 0)
    assert await h.store.get_session("s1") == after
    assert await h.store.get_session("s2") is None
    assert await sweep(h, t1 + HOLD + 3) == []

    # New sessions are numbered after the restored ones, so they list first.
    await add_players(h, "frank", now=t1 + HOLD + 4)
    new = await h.store.create_session("frank", "s4", "", 4, None, t1 + HOLD + 4)
    assert new["seq"] == 7
    assert await open_ids(h) == ["s4", "s1"]
    await h.drain(0)

    # Emptied again: the epoch is gone until the next restore sets a new one.
    keys = [k async for k in h.client.scan_iter(match=f"{h.prefix}*")]
    await h.client.delete(*keys)
    h.epoch = None
    assert await sweep(h, t1 + HOLD + 5) == []
    assert await h.store.restore("gen-3", [connecting], HOLD, t1 + HOLD + 6) == ("gen-3", 1)
    h.epoch = "gen-3"
    assert await sweep(h, t1 + HOLD + 7) == []


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_restore_rebuilds_the_server_index(store: Harness) -> None:
    h = store
    assert isinstance(h, RedisHarness)
    src, _ = await persisted(h)
    for pid in ("alice", "bob", "carol", "dave"):
        await src.new_player(pid, name(pid), tokh(pid), conn(pid), T0)
    records: dict[str, SessionRecord] = {}
    for sid, host, server_id, now in (("s1", "alice", "gs-1", T0), ("s2", "bob", "gs-2", T0),
                                      ("s3", "carol", "gs-1", T0 + 10)):
        await src.create_session(host, sid, "", 4, None, now)
        await src.begin_start(host, now + 1)
        done = await src.finish_start(sid, server_id, "10.0.0.7:7777", now + 2)
        assert done is not None
        records[sid] = done
    records["s4"] = await src.create_session("dave", "s4", "", 4, None, T0)
    assert await src.get_session_by_server("gs-1") == records["s3"]

    # gs-1 was given to s1, then s3: whatever the order of the records, the
    # rebuilt index names s3, as it did before.
    order = [records[sid] for sid in ("s3", "s4", "s1", "s2")]
    assert await h.store.restore("gen-1", order, HOLD, T0 + 100) == ("gen-1", 4)
    h.epoch = "gen-1"
    assert await h.store.get_session_by_server("gs-1") == records["s3"]
    assert await h.store.get_session_by_server("gs-2") == records["s2"]
    assert len([k async for k in h.client.scan_iter(match=f"{h.prefix}srv:*")]) == 2
    await h.store.complete("s1", "completed", T0 + 101)
    assert await h.store.get_session_by_server("gs-1") == records["s3"]
    await h.store.complete("s3", "completed", T0 + 102)
    assert await h.store.get_session_by_server("gs-1") is None
    await h.drain(2)


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_restore_writes_only_sessions_that_do_not_exist(store: Harness) -> None:
    h = store
    assert isinstance(h, RedisHarness)
    src, _ = await persisted(h)
    await src.new_player("gina", "Gina", tokh("gina"), conn("gina"), T0)
    await src.new_player("hugo", "Hugo", tokh("hugo"), conn("hugo"), T0)
    stale = await src.create_session("gina", "s1", "", 4, None, T0)
    kept = await src.create_session("hugo", "s2", "", 4, None, T0)
    # Before any node restored, a player created a session on the empty Redis.
    await add_players(h, "zed", now=T0 + 5)
    own = await h.store.create_session("zed", "s1", "", 4, None, T0 + 5)
    assert await h.store.restore("gen-1", [stale, kept], HOLD, T0 + 6) == ("gen-1", 1)
    h.epoch = "gen-1"
    assert await h.store.get_session("s1") == own
    assert await h.store.get_session("s2") == kept
    assert await h.store.stats() == {"open_sessions": 2, "held_seats": 1}
    # The counter keeps to the highest of both, so ids stay ordered by creation.
    await add_players(h, "ivan", now=T0 + 7)
    assert (await h.store.create_session("ivan", "s3", "", 4, None, T0 + 7))["seq"] == 3
    assert await open_ids(h) == ["s3", "s2", "s1"]
    res = await h.store.resume("hugo", tokh("hugo"), conn("hugo", "n2"), T0 + 8)
    assert res == ResumeResult(PlayerInfo("hugo", "Hugo", "s2"), kept)
    await h.drain(0)


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_concurrent_restores_rebuild_once(store: Harness) -> None:
    # Every node finds the epoch missing at about the same time; one rebuilds.
    h = store
    assert isinstance(h, RedisHarness)
    src, _ = await persisted(h)
    records = []
    for i in range(6):
        pid = f"p{i}"
        await src.new_player(pid, name(pid), tokh(pid), conn(pid), T0)
        records.append(await src.create_session(pid, f"s{i}", "", 4, None, T0 + i))
    results = await asyncio.gather(
        *(h.store.restore(f"gen-{n}", records, HOLD, T0 + 100) for n in range(8)))
    winner = results[0][0]
    assert all(epoch == winner for epoch, _ in results), results
    assert sorted(count for _, count in results) == [0] * 7 + [6]
    h.epoch = winner
    assert await sweep(h, T0 + 101) == []
    assert await open_ids(h) == [f"s{i}" for i in reversed(range(6))]
    # One hold per restored member, not one per restore call.
    assert await h.store.stats() == {"open_sessions": 6, "held_seats": 6}
    await h.drain(0)


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_restore_of_nothing_starts_a_generation(store: Harness) -> None:
    # A fresh deployment (or no persistence): nothing to rebuild, but the epoch
    # is set, and what was created before the first sweep stays as it was.
    h = store
    await add_players(h, "alice")
    rec = await h.store.create_session("alice", "s1", "", 4, None, T0)
    assert await sweep(h, T0 + 1) == []
    assert await h.store.restore("gen-1", [], HOLD, T0 + 2) == ("gen-1", 0)
    h.epoch = "gen-1"
    assert await sweep(h, T0 + 3) == []
    assert await h.store.get_session("s1") == rec
    assert await h.store.stats() == {"open_sessions": 1, "held_seats": 0}
    await add_players(h, "bob", now=T0 + 4)
    assert (await h.store.create_session("bob", "s2", "", 4, None, T0 + 4))["seq"] == 2
    assert await h.store.restore("gen-2", [], HOLD, T0 + 5) == ("gen-1", 0)
    await h.drain(0)


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_rebind_gives_connected_players_their_sockets_back(store: Harness) -> None:
    h = store
    assert isinstance(h, RedisHarness)
    src, _ = await persisted(h)
    for pid in ("alice", "bob", "olga"):
        await src.new_player(pid, name(pid), tokh(pid), conn(pid), T0)
    await src.create_session("alice", "s1", "", 5, None, T0)
    await src.join_session("bob", "s1", None, T0 + 1)
    rec = await src.join_session("olga", "s1", None, T0 + 2)
    # Persisted before members carried token hashes: olga's record has none,
    # so the restore cannot recreate her; only her live socket can.
    del rec["members"][2]["tokh"]  # type: ignore[misc]
    t1 = T0 + 1_000
    assert await h.store.restore("gen-1", [rec], HOLD, t1) == ("gen-1", 1)
    h.epoch = "gen-1"
    assert await h.store.stats() == {"open_sessions": 1, "held_seats": 2}

    live = [
        LiveClient("alice", "Alice", tokh("alice"), conn("alice"), "s1"),  # restored, conn ''
        LiveClient("olga", "Olga", tokh("olga"), conn("olga"), "s1"),  # missing: a member
        LiveClient("hank", "Hank", tokh("hank"), conn("hank"), None),  # was in no session
        LiveClient("ivy", "Ivy", tokh("ivy"), conn("ivy"), "s1"),  # claims s1, not a member
        LiveClient("jack", "Jack", tokh("jack"), conn("jack"), "gone"),  # session not restored
    ]
    assert await h.store.rebind(live, t1 + 1) == 5
    # alice is connected again, so her hold is gone; bob (not on this node) keeps his.
    assert await h.store.stats() == {"open_sessions": 1, "held_seats": 1}
    # Everyone here already has a socket now: a second rebind changes nothing.
    assert await h.store.rebind(live, t1 + 2) == 0
    assert await h.store.rebind([], t1 + 2) == 0
    await h.drain(0)

    # bob's hold runs out; alice and olga are connected and stay.
    changes = await sweep(h, t1 + HOLD, TO)
    after = await h.store.get_session("s1")
    assert after is not None and ids(after) == ["alice", "olga"]
    assert changes == [Change("s1", after, None)]
    assert summary(await h.drain(1)) == [("s1", "player_left", 4)]

    # Each got its socket back: a resume elsewhere tells this node to drop the old one.
    sessions = {"alice": "s1", "olga": "s1", "hank": None, "ivy": None, "jack": None}
    for c in live:
        res = await h.store.resume(c.player_id, c.token_hash, conn(c.player_id, "n2"), t1 + HOLD)
        sid = sessions[c.player_id]
        assert res == ResumeResult(
            PlayerInfo(c.player_id, c.name, sid), after if sid else None), c.player_id
    assert await h.drain(5) == [
        ("node:n1", {"e": "replaced", "player_id": c.player_id, "conn": c.conn}) for c in live]
    # And each is a full player: olga can leave the session, ivy and jack can create one.
    assert ids((await h.store.leave_session("olga", t1 + HOLD + 1)).record) == ["alice"]
    await h.store.create_session("ivy", "s2", "", 4, None, t1 + HOLD + 2)
    await h.store.create_session("jack", "s3", "", 4, None, t1 + HOLD + 3)
    await h.drain(1)


@pytest.mark.parametrize("store", ["memory"], indirect=True)
async def test_memory_store_has_nothing_to_rebuild(store: Harness) -> None:
    h = store
    await add_players(h, "alice")
    rec = await h.store.create_session("alice", "s1", "", 4, None, T0)
    other = {**rec, "id": "s2", "seq": 9}
    assert await h.store.restore("gen-1", [other], HOLD, T0 + 1) == ("memory", 0)  # type: ignore[list-item]
    assert await h.store.get_session("s2") is None
    live = [LiveClient("bob", "Bob", tokh("bob"), conn("bob"), None)]
    assert await h.store.rebind(live, T0 + 2) == 0
    assert await h.store.resume("bob", tokh("bob"), conn("bob", "n2"), T0 + 3) is None
    assert await sweep(h, T0 + 4, TO) == []  # the epoch stays "memory"
    await h.drain(0)


# the two stores side by side -------------------------------------------------


async def outcome(call: Awaitable[Any]) -> Any:
    try:
        return ("ok", await call)
    except PasswordRequired as need:
        return ("password", need.pw)
    except LobbyError as err:
        return ("error", err.code, err.message)


async def scripted_run(h: Harness) -> list[Any]:
    """Every return value and every event of one long scenario, step by step."""
    trace: list[Any] = []
    s = h.store
    # Non-ASCII names travel through Python's json (ensure_ascii) and Lua's cjson.
    players = {"zoe": "Zoë 🎮", "li": "李", "max": "Max \"the\" /Ω\\", "ann": "Ann"}
    for pid, pname in players.items():
        trace.append(await s.new_player(pid, pname, tokh(pid), conn(pid), T0))
    B = T0 + 20 + HOLD
    C = B + 20 + TO.idle_ms
    steps: list[Awaitable[Any]] = [
        s.create_session("zoe", "s1", "", 3, None, T0 + 1, codes=["CODE22"]),
        s.create_session("li", "s2", "Ünï «room»", 2, PW, T0 + 2, codes=["CODE22", "CODE33"]),
        s.join_session("max", "s2", None, T0 + 3),
        s.join_session("max", "s2", PW, T0 + 4),
        s.join_session("ann", "s2", PW, T0 + 5),
        s.join_session("ann", "s1", None, T0 + 6),
        s.list_sessions(1, None),
        s.list_sessions(1, "2"),
        s.kick("li", "max", T0 + 7),
        s.join_session("max", "s1", None, T0 + 8),
        s.disconnect("zoe", conn("zoe"), T0 + 9, HOLD),
        sweep(h, T0 + 9 + HOLD),
        s.begin_start("ann", T0 + 10 + HOLD),
        s.disconnect("max", conn("max"), T0 + 11 + HOLD, HOLD),
        s.fail_start("s1", ErrorCode.NO_SERVER_AVAILABLE, "¡sin servidor!", T0 + 12 + HOLD, HOLD),
        s.resume("max", tokh("max"), conn("max", "n2"), T0 + 13 + HOLD),
        s.begin_start("ann", T0 + 14 + HOLD),
        s.finish_start("s1", "gs-9", "[::1]:7777", T0 + 15 + HOLD),
        s.get_session_by_server("gs-9"),
        s.leave_session("li", T0 + 16 + HOLD),
        s.mark_in_progress("s2", B),
        s.create_session("li", "s3", "", 2, None, B + 1, codes=["CODE22", "CODE55"]),
        s.mark_in_progress("s3", B + 2),
        s.mark_in_progress("s1", B + 3),
        s.mark_in_progress("s1", B + 4),
        s.disconnect("ann", conn("ann"), B + 5, HOLD),
        sweep(h, B + 6, TO),
        s.complete("s1", "completed", B + 7),
        s.resume("ann", tokh("ann"), conn("ann", "n2"), B + 8),
        s.join_session("max", "s3", None, B + 9),
        sweep(h, B + 1 + TO.idle_ms, TO),
        sweep(h, B + 9 + TO.idle_ms, TO),
        s.complete("s3", "completed", B + 10 + TO.idle_ms),
        s.create_session("max", "s4", "", 4, None, C, codes=["CODE44"]),
        s.begin_start("max", C + 1),
        sweep(h, C + TO.connecting_ms, TO),
        sweep(h, C + 1 + TO.connecting_ms, TO),
        s.get_session("s1"),
        s.get_session("s2"),
        s.get_session("s3"),
        s.get_session("s4"),
        s.get_session_by_server("gs-9"),
        s.stats(),
        # lobby data: attributes, visibility, lock, settings, bans, promotion
        s.new_player("eve", "Eve", tokh("eve"), conn("eve"), C + 2),
        s.create_session("li", "s5", "", 4, None, C + 2, codes=["CODE33", "ABCDEF"],
                         attributes={"mode": "ctf", "skill": attr_value(1 / 3), "ranked": True},
                         visibility="unlisted", indexed=("mode", "ranked")),
        s.session_of_code("ABCDEF"),
        s.session_of_code("CODE33"),
        s.session_of_code("CODE44"),  # s4 has ended: its code is free again
        s.list_sessions(10, None),
        s.join_session("eve", "s5", None, C + 3),
        s.join_session("max", "s5", None, C + 3),
        s.update_player("eve", {"team": "réd", "lvl": 3}, C + 4),
        s.update_player("eve", {"team": None, "x": 1e20}, C + 4),
        s.update_player("eve", {f"k{i}": i for i in range(7)}, C + 4),
        s.update_session("li", {"attrs": {"mode": None, "map": "dust"}, "name": "Ünï 2",
                                "vis": "public", "locked": True, "max": 3}, C + 5,
                         indexed=("mode", "map")),
        s.list_sessions(10, None),
        s.update_session("li", {"locked": False, "pw": PW}, C + 6),
        s.list_sessions(10, None),
        s.update_session("li", {"max": 2}, C + 6),
        s.update_session("li", {"attrs": {f"k{i}": i for i in range(15)}}, C + 6),
        s.update_session("eve", {"name": "mine"}, C + 6),
        s.kick("li", "max", C + 7, ban=True),
        s.join_session("max", "s5", None, C + 8),
        s.promote("li", "li", C + 9),
        s.promote("li", "eve", C + 9),
        s.promote("li", "eve", C + 9),
        s.get_session("s5"),
        s.stats(),
    ]
    for step in steps:
        trace.append(await outcome(step))
        trace.append(await h.drain())
    return trace


async def test_memory_and_redis_agree_step_by_step(request: pytest.FixtureRequest) -> None:
    memory = await open_harness("memory", request)
    redis_h = await open_harness("redis", request)
    try:
        expected = await scripted_run(memory)
        actual = await scripted_run(redis_h)
    finally:
        await memory.close()
        await redis_h.close()
    assert len(actual) == len(expected)
    for i, (mem, red) in enumerate(zip(expected, actual, strict=True)):
        assert red == mem, f"trace entry {i} differs (memory first)"
    # The scenario must have exercised the paths it names, not failed early.
    assert ("ok", {"open_sessions": 0, "held_seats": 0}) in expected
    assert expected[-2] == ("ok", {"open_sessions": 1, "held_seats": 0})
    results = [entry[1] for entry in expected if isinstance(entry, tuple) and entry[0] == "ok"]
    changes = [c for r in results for c in (r if isinstance(r, list) else [r])]
    assert [c.ended for c in changes if isinstance(c, Change)] == [
        None, "abandoned", "completed", "idle", "server_timeout"]
    errors = [entry[1:] for entry in expected if isinstance(entry, tuple) and entry[0] == "error"]
    assert (ErrorCode.BAD_REQUEST, "the session is not CONNECTING") in errors


# password guesses, counted in the store (shared by every node) -----------------
GL = GuessLimits(per_session=4, per_address=6, window_ms=60_000, lock_ms=10_000,
                 lock_max_ms=35_000)


async def _guesses(h: Harness, sid: str, addr: str, n: int, now: int) -> list[GuessVerdict]:
    return [await h.store.password_guess(sid, addr, now, GL) for _ in range(n)]


async def test_guesses_per_session_then_a_growing_lock(store: Harness) -> None:
    s = store.store
    allowed = await _guesses(store, "s1", "10.0.0.1", 2, T0)
    allowed += await _guesses(store, "s1", "10.0.0.2", 2, T0 + 1)
    assert allowed == [GuessVerdict()] * 4
    # The fifth guess in the window locks the session for the addresses that guessed.
    assert await s.password_guess("s1", "10.0.0.1", T0 + 2, GL) == \
        GuessVerdict(10_000, "session")
    assert await s.password_guess("s1", "10.0.0.2", T0 + 1_002, GL) == \
        GuessVerdict(9_000, "session")
    # Another session is not affected.
    assert await s.password_guess("s2", "10.0.0.1", T0 + 3, GL) == GuessVerdict()
    # A fresh address gets one guess during the lock, then is locked out too.
    assert await s.password_guess("s1", "10.0.0.9", T0 + 5, GL) == GuessVerdict()
    assert await s.password_guess("s1", "10.0.0.9", T0 + 6, GL) == GuessVerdict(9_996, "session")
    # After the lock: the window began with it (the fresh address's guess counts),
    # and the next lock lasts twice as long, then is capped.
    t = T0 + 2 + 10_000
    assert await _guesses(store, "s1", "10.0.0.4", 3, t) == [GuessVerdict()] * 3
    assert await s.password_guess("s1", "10.0.0.4", t, GL) == GuessVerdict(20_000, "session")
    t += 25_000  # past the lock (the window began with it)
    assert await _guesses(store, "s1", "10.0.0.3", 4, t) == [GuessVerdict()] * 4
    assert await s.password_guess("s1", "10.0.0.3", t, GL) == GuessVerdict(35_000, "session")


async def test_guesses_per_address_across_sessions(store: Harness) -> None:
    s = store.store
    verdicts = [await s.password_guess(f"s{i}", "10.0.0.7", T0 + i, GL) for i in range(6)]
    assert verdicts == [GuessVerdict()] * 6
    assert await s.password_guess("s9", "10.0.0.7", T0 + 10, GL) == \
        GuessVerdict(10_000, "address")
    assert await s.password_guess("s0", "10.0.0.7", T0 + 20, GL) == \
        GuessVerdict(9_990, "address")
    assert await s.password_guess("s0", "10.0.0.8", T0 + 20, GL) == GuessVerdict()
    # The window passes: the address may guess again.
    assert await s.password_guess("s9", "10.0.0.7", T0 + 10 + 10_000, GL) == GuessVerdict()


async def test_right_passwords_are_refunded_and_windows_reset(store: Harness) -> None:
    s = store.store
    for i in range(10):  # right passwords, each refunded: never a lock
        assert await s.password_guess("s1", "10.0.0.1", T0 + i, GL) == GuessVerdict()
        await s.password_refund("s1", "10.0.0.1", T0 + i, GL)
    assert await _guesses(store, "s1", "10.0.0.1", 4, T0 + 20) == [GuessVerdict()] * 4
    assert (await s.password_guess("s1", "10.0.0.1", T0 + 21, GL)).scope == "session"
    # A window without a lock: the count starts again.
    assert await _guesses(store, "s2", "10.0.0.2", 4, T0) == [GuessVerdict()] * 4
    assert await _guesses(store, "s2", "10.0.0.2", 4, T0 + 60_000) == [GuessVerdict()] * 4


async def test_claim_creates_or_takes_over_a_player(store: Harness) -> None:
    h = store
    res, new = await h.store.claim("sub-1", "Alice", "tokh-1", conn("sub-1"), T0)
    assert new and res == ResumeResult(PlayerInfo("sub-1", "Alice", None), None)
    await h.drain(0)
    await h.store.create_session("sub-1", "s1", "", 4, None, T0 + 1)
    await h.store.disconnect("sub-1", conn("sub-1"), T0 + 2, HOLD)
    await h.drain(1)  # player_disconnected
    # The same identity on another node: same player, same session, seat hold ended
    # (as a resume: player_reconnected), and the name it had (a claim's name is for
    # new players only).
    res, new = await h.store.claim("sub-1", "Other", "tokh-2", conn("sub-1", "n2"), T0 + 3)
    rec = await h.store.get_session("s1")
    assert not new and res == ResumeResult(PlayerInfo("sub-1", "Alice", "s1"), rec, True)
    assert (await h.store.stats())["held_seats"] == 0
    # The dropped socket's conn was cleared: no node to tell it was replaced.
    assert summary(await h.drain(1)) == [("s1", "player_reconnected", rec["v"])]
    # A third socket: the second one's node is told; only the newest resume token works.
    await h.store.claim("sub-1", "Alice", "tokh-3", conn("sub-1", "n3"), T0 + 4)
    assert await h.drain(1) == [
        ("node:n2", {"e": "replaced", "player_id": "sub-1", "conn": "n2.sub-1"})]
    assert await h.store.resume("sub-1", "tokh-2", conn("sub-1", "n4"), T0 + 5) is None
    resumed = await h.store.resume("sub-1", "tokh-3", conn("sub-1", "n4"), T0 + 6)
    assert resumed is not None and resumed.player == PlayerInfo("sub-1", "Alice", "s1")


async def test_guesses_at_no_session_count_for_the_address_only(store: Harness) -> None:
    s = store.store
    for i in range(6):  # join codes: the address limit, no session to lock
        assert await s.password_guess("", "10.0.0.5", T0 + i, GL) == GuessVerdict()
    assert await s.password_guess("", "10.0.0.5", T0 + 10, GL) == GuessVerdict(10_000, "address")
    # The same address is locked for passwords too; another address is not.
    assert (await s.password_guess("s1", "10.0.0.5", T0 + 11, GL)).scope == "address"
    assert await s.password_guess("", "10.0.0.6", T0 + 11, GL) == GuessVerdict()
    # A code that named a session is refunded.
    await s.password_refund("", "10.0.0.6", T0 + 12, GL)
    for i in range(5):
        assert await s.password_guess("", "10.0.0.6", T0 + 13 + i, GL) == GuessVerdict()
    assert await s.password_guess("", "10.0.0.6", T0 + 20, GL) == GuessVerdict()
    assert (await s.password_guess("", "10.0.0.6", T0 + 21, GL)).scope == "address"


# the rebuild lease and its batches; scanning every live session ------------------


async def test_scan_sessions_returns_every_live_session(store: Harness) -> None:
    h = store
    pids = [f"sc{i}" for i in range(7)]
    await add_players(h, *pids)
    for i, pid in enumerate(pids):
        await h.store.create_session(pid, f"s{i}", "", 4, None, T0 + i)
    await h.store.begin_start("sc3", T0 + 10)
    await h.store.leave_session("sc5", T0 + 11)  # ended: not live
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await h.store.scan_sessions(cursor, 2)
        for rec in page:
            assert rec == await h.store.get_session(rec["id"])
        seen.extend(r["id"] for r in page)
        if cursor is None:
            break
    assert sorted(set(seen)) == ["s0", "s1", "s2", "s3", "s4", "s6"]
    assert await h.store.current_epoch() == h.epoch
    await h.drain()


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_rebuild_lease_is_exclusive_and_taken_over_when_it_runs_out(
    store: Harness,
) -> None:
    h = store
    assert isinstance(h, RedisHarness)
    src, _ = await persisted(h)
    records = []
    for i in range(3):
        pid = f"r{i}"
        await src.new_player(pid, name(pid), tokh(pid), conn(pid), T0)
        records.append(await src.create_session(pid, f"s{i}", "", 4, None, T0 + i))
    first, rest = restore_batches(records[:2], size=1), restore_batches(records, size=2)
    assert len(first) == 2 and len(rest) == 2

    assert await h.store.take_restore_lease("a", 60_000) == RestoreLease(None, True)
    assert await h.store.take_restore_lease("b", 60_000) == RestoreLease(None, False, "a")
    assert await h.store.restore_batch("b", first[0], HOLD, 60_000, T0 + 10) is None
    assert await h.store.restore_batch("a", first[0], HOLD, 60_000, T0 + 10) == 1
    assert await h.store.current_epoch() is None  # not done: nodes keep waiting
    assert await sweep(h, T0 + 11) == []
    # a stalls; its lease runs out and b takes over, keeping what a restored.
    assert await h.store.take_restore_lease("a", 1) == RestoreLease(None, True)
    lease = f"{h.store.keys.bucket_prefix(0)}rebuild"
    await h.until_key_expired(lease)
    assert await h.store.take_restore_lease("b", 60_000) == RestoreLease(None, True)
    assert await h.store.restore_batch("a", first[1], HOLD, 60_000, T0 + 12) is None
    assert [await h.store.restore_batch("b", b, HOLD, 60_000, T0 + 12) for b in rest] == [1, 1]
    assert await h.store.finish_restore("b", "gen-b") == "gen-b"
    h.epoch = "gen-b"
    assert not await h.client.exists(lease)
    # a's late end learns b's epoch; nothing is left to do for anyone.
    assert await h.store.finish_restore("a", "gen-a") == "gen-b"
    assert await h.store.take_restore_lease("a", 60_000) == RestoreLease("gen-b", False)
    assert await h.store.restore_batch("b", rest[0], HOLD, 60_000, T0 + 13) is None
    for rec in records:
        assert await h.store.get_session(rec["id"]) == rec
    # The newest session came first, so the counter was past all of them at once.
    assert (await h.client.get(f"{h.store.keys.bucket_prefix(0)}seq")) == b"3"
    assert await open_ids(h) == ["s2", "s1", "s0"]
    assert await sweep(h, T0 + 14) == []
    await h.drain(0)


@pytest.mark.parametrize("store", ["memory"], indirect=True)
async def test_memory_store_never_holds_a_rebuild_lease(store: Harness) -> None:
    h = store
    assert await h.store.take_restore_lease("a", 1000) == RestoreLease("memory", False)
    assert await h.store.restore_batch("a", "[]", HOLD, 1000, T0) is None
    assert await h.store.finish_restore("a", "x") == "memory"


# per-address WebSocket counts across nodes (lobby/addresses.py's AddressLedger) ---


async def test_address_counts_hold_across_node_incarnations(store: Harness) -> None:
    s = store.store
    a, b = "n1#aaaa", "n2#bbbb"
    for inc in (a, b):
        assert await s.address_beat(inc, T0, 10_000, first=True)
    acquire = ("acquire", "10.0.0.1")
    assert await s.address_apply(a, [acquire, acquire], 3) == [True, True]
    # The third socket fits on the other node; the fourth is over the cap on any node.
    assert await s.address_apply(b, [acquire, acquire, ("acquire", "2001:db8::1")], 3) \
        == [True, False, True]
    assert await s.address_apply(a, [acquire], 3) == [False]
    assert await s.address_count("10.0.0.1") == 3
    assert await s.address_count("2001:db8::1") == 1
    # A release frees a place for any node, in the same batch as the next acquire.
    assert await s.address_apply(a, [("release", "10.0.0.1")], 3) == [True]
    assert await s.address_apply(b, [acquire], 3) == [True]
    assert await s.address_apply(a, [("release", "10.0.0.1"), acquire, acquire], 3) \
        == [True, True, False]
    # A count never goes below zero: a release the store no longer has is a no-op.
    assert await s.address_apply(a, [("release", "10.0.0.1")] * 3 + [("forget", "10.0.0.1")],
                                 3) == [True] * 4
    assert await s.address_count("10.0.0.1") == 2
    if isinstance(s, RedisStore):
        await store.client.script_flush()  # as a restarted Redis: no scripts loaded
    assert await s.address_apply(a, [("release", "10.0.0.9"), acquire], 3) == [True, True]
    assert await s.address_count("10.0.0.1") == 3


async def test_a_lapsed_incarnation_is_swept_and_told(store: Harness) -> None:
    s = store.store
    dead, alive = "n1#dead", "n2#live"
    assert await s.address_beat(dead, T0, 10_000, first=True)
    assert await s.address_beat(alive, T0, 10_000, first=True)
    assert await s.address_apply(dead, [("acquire", "10.0.0.1")] * 2
                                 + [("acquire", "10.0.0.2")], 2) == [True] * 3
    assert await s.address_apply(alive, [("acquire", "10.0.0.3")], 2) == [True]
    assert await s.address_apply(alive, [("acquire", "10.0.0.1")], 2) == [False]
    assert await s.address_sweep(T0 + 9_000) == 0
    assert await s.address_beat(alive, T0 + 9_000, 10_000)
    # Past its heartbeat: its counts go (an address it held is free again), the
    # live node's stay.
    assert await s.address_sweep(T0 + 10_001) == 1
    assert await s.address_count("10.0.0.1") == 0
    assert await s.address_count("10.0.0.2") == 0
    assert await s.address_count("10.0.0.3") == 1
    assert await s.address_apply(alive, [("acquire", "10.0.0.1")] * 2, 2) == [True, True]
    assert await s.address_sweep(T0 + 10_002) == 0
    # The lapsed incarnation, were it only paused, learns it at its next beat
    # (swept or not yet), and does not come back to life.
    assert not await s.address_beat(dead, T0 + 10_003, 10_000)
    late = "n3#late"
    assert await s.address_beat(late, T0, 10_000, first=True)
    assert not await s.address_beat(late, T0 + 10_000, 10_000)
    assert not await s.address_beat("n4#never", T0, 10_000)


async def test_address_counts_restored_and_dropped_whole(store: Harness) -> None:
    s = store.store
    old, new = "n1#old", "n1#new"
    assert await s.address_beat(old, T0, 10_000, first=True)
    assert await s.address_apply(old, [("acquire", "10.0.0.1")] * 2, 5) == [True, True]
    # A node writes its counts again under a new incarnation, then drops the old one.
    assert await s.address_beat(new, T0, 10_000, first=True)
    await s.address_restore(new, {"10.0.0.1": 2, "10.0.0.2": 1})
    assert await s.address_count("10.0.0.1") == 4
    await s.address_drop(old)
    assert await s.address_count("10.0.0.1") == 2
    assert await s.address_count("10.0.0.2") == 1
    assert not await s.address_beat(old, T0 + 1, 10_000)
    assert await s.address_apply(new, [("acquire", "10.0.0.1")] * 4, 5) \
        == [True, True, True, False]
    await s.address_drop(new)
    assert await s.address_count("10.0.0.1") == 0
    assert await s.address_sweep(T0 + 20_000) == 0
    if isinstance(s, RedisStore):
        # Nothing left behind, and every address under its own hash tag.
        left = [k async for k in store.client.scan_iter(match=f"{s.prefix}*")]
        assert [k for k in left if b"{a" in k or k.endswith(b"anodes")] == []
        assert s._address_key("2001:db8::1").endswith("{a:2001:db8::1}")


# a change cut between its two steps (Redis stores) ------------------------------


async def point(h: RedisHarness, pid: str, sid: str) -> None:
    """The player's pointer names `sid`, as when a node died between the first step of
    a create or join (the pointer) and the second (the session)."""
    key = h.store.keys.player(pid)
    record = json.loads(await h.client.get(key))
    record["sid"] = sid
    await h.client.set(key, json.dumps(record))


@pytest.mark.parametrize("store", ["redis", "cluster", "sentinel"], indirect=True)
async def test_a_pointer_left_by_a_cut_change_is_repaired_on_the_next_one(
    store: Harness,
) -> None:
    h = store
    assert isinstance(h, RedisHarness)
    await add_players(h, "alice", "bob", "carol")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.create_session("carol", "s2", "", 4, None, T0)

    # Pointing to a session that was never made: the join repairs it and goes on.
    await point(h, "bob", "ghost")
    rec = await h.store.join_session("bob", "s1", None, T0 + 1)
    assert ids(rec) == ["alice", "bob"]
    await h.store.leave_session("bob", T0 + 2)

    # Pointing to a live session that does not list bob (a join of s2 cut after its
    # first step): joining s1 works, s2 is untouched.
    await point(h, "bob", "s2")
    rec = await h.store.join_session("bob", "s1", None, T0 + 3)
    assert ids(rec) == ["alice", "bob"]
    s2 = await h.store.get_session("s2")
    assert s2 is not None and ids(s2) == ["carol"]
    await h.store.leave_session("bob", T0 + 4)

    # Pointing to the very session the cut join was for: the next join of it works.
    await point(h, "bob", "s1")
    rec = await h.store.join_session("bob", "s1", None, T0 + 5)
    assert ids(rec) == ["alice", "bob"]

    # A leave of a player whose pointer names a session without them says so, and
    # leaves the session as it is.
    await h.store.leave_session("bob", T0 + 6)
    await point(h, "bob", "s2")
    await fails(ErrorCode.NOT_IN_SESSION, h.store.leave_session("bob", T0 + 7))
    s2 = await h.store.get_session("s2")
    assert s2 is not None and ids(s2) == ["carol"]
    # ...and a create after it repairs the pointer too.
    rec = await h.store.create_session("bob", "s3", "", 4, None, T0 + 8)
    assert ids(rec) == ["bob"]
