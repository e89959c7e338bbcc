"""One suite, two stores: embedded mode (MemoryStore) must behave exactly like Redis mode.

Every test runs against both stores through the `store` harness, which also
collects what the store publishes. Channels are normalised to the memory form
("<session id>" / "node:<id>") so one set of assertions holds for both. Clocks
are explicit numbers: a seat hold expires because `sweep` is called with a later
`now`, never because the test slept.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
import redis.asyncio as aioredis

from lobby.errors import ErrorCode, LobbyError
from lobby.session import Member, PasswordHash, SessionRecord
from lobby.store.base import Change, PasswordRequired, PlayerInfo, ResumeResult, SessionStore
from lobby.store.memory import MemoryStore
from lobby.store.redis import RedisStore

T0 = 1_700_000_000_000  # a realistic epoch in ms: Lua's cjson must round-trip it exactly
HOLD = 30_000
PW: PasswordHash = {"salt": "a1" * 16, "hash": "b2" * 32}

Event = tuple[str, dict[str, Any]]  # (normalised channel, decoded message)


# harness ---------------------------------------------------------------------


class Harness:
    """A store plus the events it published, in publish order."""

    kind: str
    store: SessionStore

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._arrived = asyncio.Event()

    def _collect(self, channel: str, message: str | bytes) -> None:
        self.events.append((channel, json.loads(message)))
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

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStore(self._publish)

    def _publish(self, channel: str, message: str) -> None:
        # The memory bus hands messages on as text, exactly like Redis would.
        assert isinstance(message, str)
        self._collect(channel, message)


class RedisHarness(Harness):
    kind = "redis"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.client = aioredis.from_url(url)
        # A unique prefix proves the store confines itself to the prefix it is given.
        self.prefix = f"conf-{uuid.uuid4().hex[:8]}:"
        self.store = RedisStore(self.client, self.prefix)
        self._pubsub = self.client.pubsub()
        self._reader: asyncio.Task[None] | None = None
        self._fences: dict[str, asyncio.Future[None]] = {}

    async def open(self) -> None:
        await self._pubsub.psubscribe(f"{self.prefix}*")
        # Events published before Redis confirms the pattern would be lost.
        async with asyncio.timeout(5):
            while True:
                msg = await self._pubsub.get_message(timeout=1.0)
                if msg is not None and msg["type"] == "psubscribe":
                    break
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self._pubsub.listen():
            if msg["type"] != "pmessage":
                continue
            rest = msg["channel"].decode()[len(self.prefix):]
            if rest == "fence":
                fut = self._fences.pop(msg["data"].decode(), None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif rest.startswith("ev:"):
                self._collect(rest[3:], msg["data"])
            else:
                # "node:<id>" already has the memory form; anything else is left
                # as it came so that a stray channel shows up in an assertion.
                self._collect(rest, msg["data"])

    async def fence(self) -> None:
        # Redis delivers one subscriber's messages in publish order, so once our
        # own marker arrives, every event the store published before it has too.
        token = uuid.uuid4().hex
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fences[token] = fut
        await self.client.publish(f"{self.prefix}fence", token)
        await asyncio.wait_for(fut, 5)

    async def until_player_expired(self, player_id: str) -> None:
        key = f"{self.prefix}p:{player_id}"
        async with asyncio.timeout(5):
            # PTTL is -2 once the key is gone; reading a key past its deadline
            # expires it at once, so this polls for about the remaining TTL.
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
        await self.client.aclose()


async def open_harness(kind: str, request: pytest.FixtureRequest) -> Harness:
    if kind == "memory":
        return MemoryHarness()
    harness = RedisHarness(request.getfixturevalue("redis_url"))
    await harness.open()
    return harness


@pytest.fixture(params=["memory", "redis"])
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
    return {"id": pid, "name": name(pid), "joined": joined}


def ids(rec: SessionRecord | dict[str, Any]) -> list[str]:
    return [m["id"] for m in rec["members"]]


def summary(events: list[Event]) -> list[tuple[str, str, int | None]]:
    return [(ch, ev["e"], ev.get("v")) for ch, ev in events]


async def add_players(h: Harness, *pids: str, now: int = T0) -> None:
    for pid in pids:
        info = await h.store.new_player(pid, name(pid), tokh(pid), conn(pid), now)
        assert info == PlayerInfo(pid, name(pid), None)


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
        "endpoint": None, "seq": 1, "v": 1, "created": T0 + 5, "updated": T0 + 5,
        "active": T0 + 5,
    }
    assert await h.store.get_session("s1") == rec

    named = await h.store.create_session("bob", "s2", "Bob's \"room\" / 2", 2, PW, T0 + 6)
    assert (named["name"], named["pw"], named["max"], named["seq"], named["v"]) == (
        "Bob's \"room\" / 2", PW, 2, 2, 1)
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
    assert (await h.store.create_session("carol", "s5", "", 4, None, T0 + 7))["seq"] == 3

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
        "e": "player_joined", "player_id": "bob", "name": "Bob", "sid": "s1", "v": 2, "s": rec,
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
        "e": "player_joined", "player_id": "bob", "name": "Bob", "sid": "s1", "v": 2, "s": rec,
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

    rec = await h.store.leave_session("bob", T0 + 3)
    assert rec is not None and ids(rec) == ["alice", "carol"] and rec["host"] == "alice"
    # bob rejoins, so carol is now present longer than him.
    await h.store.join_session("bob", "s1", None, T0 + 4)
    assert summary(await h.drain(4)) == [
        ("s1", "player_joined", 2), ("s1", "player_joined", 3),
        ("s1", "player_left", 4), ("s1", "player_joined", 5)]

    rec = await h.store.leave_session("alice", T0 + 5)
    assert rec is not None
    assert rec["members"] == [member("carol", T0 + 2), member("bob", T0 + 4)]
    assert (rec["host"], rec["v"], rec["updated"]) == ("carol", 6, T0 + 5)
    assert await h.drain(2) == [
        ("s1", {"e": "player_left", "player_id": "alice", "reason": "left",
                "sid": "s1", "v": 6, "s": rec}),
        ("s1", {"e": "host_changed", "host_id": "carol", "sid": "s1", "v": 6, "s": rec}),
    ]

    rec = await h.store.leave_session("carol", T0 + 6)
    assert rec is not None and rec["host"] == "bob" and ids(rec) == ["bob"]
    assert summary(await h.drain(2)) == [("s1", "player_left", 7), ("s1", "host_changed", 7)]

    assert await h.store.leave_session("bob", T0 + 7) is None
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
        "e": "player_left", "player_id": "bob", "reason": "kicked", "sid": "s1", "v": 4, "s": rec,
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
    assert await h.store.sweep(T0 + 10 * HOLD) == []
    assert [(e["e"], e.get("reason")) for _, e in await h.drain(2)] == [
        ("player_joined", None), ("player_left", "kicked")]


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
    assert (rec["state"], rec["v"], rec["server_id"], rec["updated"]) == (
        "CONNECTING", 3, None, T0 + 10)
    assert await h.store.get_session("s1") == rec
    # begin_start publishes nothing in either store: only the join is on the channel.
    assert summary(await h.drain(1)) == [("s1", "player_joined", 2)]

    done = await h.store.finish_start("s1", "gs-1", "10.0.0.7:7777", T0 + 20)
    assert done is not None
    assert (done["state"], done["server_id"], done["endpoint"], done["v"]) == (
        "CONNECTING", "gs-1", "10.0.0.7:7777", 4)
    assert await h.drain(1) == [("s1", {
        "e": "session_started", "server_id": "gs-1", "server_endpoint": "10.0.0.7:7777",
        "sid": "s1", "v": 4, "s": done,
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

    await h.store.begin_start("alice", T0 + 3)
    back = await h.store.fail_start(
        "s1", ErrorCode.NO_SERVER_AVAILABLE, "no game server is available", T0 + 4, HOLD)
    assert back is not None
    assert (back["state"], back["v"], back["server_id"], back["endpoint"], back["updated"]) == (
        "WAITING", 4, None, None, T0 + 4)
    assert await h.store.get_session("s1") == back
    assert (await h.drain(2))[1] == ("s1", {
        "e": "session_start_failed",
        "error": {"code": "NO_SERVER_AVAILABLE", "message": "no game server is available"},
        "sid": "s1", "v": 4, "s": back,
    })
    assert await h.store.fail_start("s1", "NO_SERVER_AVAILABLE", "again", T0 + 5, HOLD) is None

    again = await h.store.begin_start("alice", T0 + 6)
    assert (again["state"], again["v"]) == ("CONNECTING", 5)
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
        assert winners[ev["player_id"]] == ev["s"]
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

    await h.store.disconnect("alice", conn("alice"), T0 + 10, HOLD)
    assert (await h.store.stats())["held_seats"] == 1
    assert await h.store.sweep(T0 + 10 + HOLD - 1) == []
    assert await h.store.get_session("s1") == before
    await h.drain(0)

    changes = await h.store.sweep(T0 + 10 + HOLD)
    after = await h.store.get_session("s1")
    assert after is not None
    assert changes == [Change("s1", after, None)]
    assert (ids(after), after["host"], after["v"], after["updated"]) == (
        ["bob"], "bob", 3, T0 + 10 + HOLD)
    assert await h.drain(2) == [
        ("s1", {"e": "player_left", "player_id": "alice", "reason": "timeout",
                "sid": "s1", "v": 3, "s": after}),
        ("s1", {"e": "host_changed", "host_id": "bob", "sid": "s1", "v": 3, "s": after}),
    ]
    assert (await h.store.stats())["held_seats"] == 0
    # The player went with the seat: the old token resumes nothing.
    assert await h.store.resume("alice", tokh("alice"), conn("alice", "n2"), T0 + HOLD + 20) is None
    assert await h.store.sweep(T0 + 100 * HOLD) == []
    await h.drain(0)


async def test_seat_hold_of_last_member_deletes_session(store: Harness) -> None:
    h = store
    await add_players(h, "alice")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.disconnect("alice", conn("alice"), T0 + 10, HOLD)
    assert await h.store.sweep(T0 + 10 + HOLD) == [Change("s1", None, "abandoned")]
    assert await h.drain(1) == [
        ("s1", {"e": "session_deleted", "sid": "s1", "v": 2, "reason": "timeout"})]
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

    first = await h.store.sweep(T0 + 20 + HOLD, limit=2)
    assert [ids(c.record or {"members": []}) for c in first] == [
        ["alice", "bob", "carol"], ["alice", "carol"]]
    second = await h.store.sweep(T0 + 20 + HOLD, limit=2)
    assert [ids(c.record or {"members": []}) for c in second] == [["alice"]]
    # Equal deadlines are taken in player-id order in both stores.
    assert [ev["player_id"] for _, ev in await h.drain(3)] == ["dave", "bob", "carol"]


async def test_concurrent_sweeps_take_each_expired_hold_once(store: Harness) -> None:
    # Every node sweeps; a hold taken twice would publish player_left twice.
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.disconnect("bob", conn("bob"), T0 + 10, HOLD)
    results = await asyncio.gather(*(h.store.sweep(T0 + 10 + HOLD) for _ in range(5)))
    assert sorted(len(r) for r in results) == [0, 0, 0, 0, 1]
    assert summary(await h.drain(2)) == [("s1", "player_joined", 2), ("s1", "player_left", 3)]


async def test_resume_before_deadline_cancels_hold(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.disconnect("bob", conn("bob"), T0 + 10, HOLD)

    res = await h.store.resume("bob", tokh("bob"), conn("bob", "n2"), T0 + 10 + HOLD - 1)
    session = await h.store.get_session("s1")
    assert res == ResumeResult(PlayerInfo("bob", "Bob", "s1"), session)
    assert (await h.store.stats())["held_seats"] == 0
    assert await h.store.sweep(T0 + 100 * HOLD) == []
    assert await h.store.get_session("s1") == session
    # The dropped socket's conn was cleared, so nobody is told "replaced".
    assert summary(await h.drain(1)) == [("s1", "player_joined", 2)]


async def test_disconnect_of_a_stale_conn_is_a_no_op(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.resume("bob", tokh("bob"), conn("bob", "n2"), T0 + 2)
    # The old socket's close is reported after the player moved on.
    await h.store.disconnect("bob", conn("bob", "n1"), T0 + 3, HOLD)
    assert (await h.store.stats())["held_seats"] == 0
    assert await h.store.sweep(T0 + 100 * HOLD) == []
    assert ids(await h.store.get_session("s1") or {"members": []}) == ["alice", "bob"]
    # Still bound to n2: resuming there again is silent.
    res = await h.store.resume("bob", tokh("bob"), conn("bob", "n2"), T0 + 4)
    assert res is not None and res.player.session_id == "s1"
    assert summary(await h.drain(2)) == [("s1", "player_joined", 2), ("node:n1", "replaced", None)]


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
    assert await h.store.sweep(T0 + 100 * HOLD) == []
    assert ids(await h.store.get_session("s1") or {"members": []}) == ["alice", "bob"]

    back = await h.store.fail_start("s1", "NO_SERVER_AVAILABLE", "none", T0 + 50, HOLD)
    assert back is not None and back["state"] == "WAITING"
    # Only the disconnected member is held again; alice is still connected.
    assert (await h.store.stats())["held_seats"] == 1
    assert await h.store.sweep(T0 + 50 + HOLD - 1) == []
    changes = await h.store.sweep(T0 + 50 + HOLD)
    after = await h.store.get_session("s1")
    assert after is not None and ids(after) == ["alice"]
    assert changes == [Change("s1", after, None)]
    events = await h.drain(3)
    assert summary(events) == [
        ("s1", "player_joined", 2), ("s1", "session_start_failed", 4), ("s1", "player_left", 5)]
    assert events[2][1]["reason"] == "timeout"


async def test_begin_start_ends_pending_holds(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.disconnect("bob", conn("bob"), T0 + 10, HOLD)
    assert (await h.store.stats())["held_seats"] == 1
    await h.store.begin_start("alice", T0 + 20)
    assert (await h.store.stats())["held_seats"] == 0
    assert await h.store.sweep(T0 + 10 + HOLD) == []
    assert ids(await h.store.get_session("s1") or {"members": []}) == ["alice", "bob"]
    await h.drain(1)


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
    await h.store.sweep(T0 + 5)
    await h.until_player_expired("alice")
    assert await h.store.resume("alice", tokh("alice"), conn("alice", "n2"), T0 + 5) is None
    await fails(ErrorCode.NOT_AUTHENTICATED, h.store.create_session("alice", "s1", "", 4, None, T0))

    # Resumed in time, the record loses its expiry for good.
    await h.store.disconnect("bob", conn("bob"), T0, 60_000)
    res = await h.store.resume("bob", tokh("bob"), conn("bob", "n2"), T0 + 1_000)
    assert res == ResumeResult(PlayerInfo("bob", "Bob", None), None)
    assert await h.store.sweep(T0 + 100 * 60_000) == []
    if isinstance(h, RedisHarness):
        assert await h.client.pttl(f"{h.prefix}p:bob") == -1
    later = await h.store.resume("bob", tokh("bob"), conn("bob", "n3"), T0 + 100 * 60_000)
    assert later is not None and later.player.player_id == "bob"
    assert summary(await h.drain(1)) == [("node:n2", "replaced", None)]


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
    assert [(ch, ev["e"], ev.get("player_id")) for ch, ev in events] == [
        ("s1", "player_joined", "carol"), ("s2", "player_joined", "dave"),
        ("s1", "player_left", "carol"), ("s2", "player_left", "dave"),
        ("node:n1", "replaced", "alice"), ("s1", "session_deleted", None),
    ]


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
    steps: list[Awaitable[Any]] = [
        s.create_session("zoe", "s1", "", 3, None, T0 + 1),
        s.create_session("li", "s2", "Ünï «room»", 2, PW, T0 + 2),
        s.join_session("max", "s2", None, T0 + 3),
        s.join_session("max", "s2", PW, T0 + 4),
        s.join_session("ann", "s2", PW, T0 + 5),
        s.join_session("ann", "s1", None, T0 + 6),
        s.list_sessions(1, None),
        s.list_sessions(1, "2"),
        s.kick("li", "max", T0 + 7),
        s.join_session("max", "s1", None, T0 + 8),
        s.disconnect("zoe", conn("zoe"), T0 + 9, HOLD),
        s.sweep(T0 + 9 + HOLD),
        s.begin_start("ann", T0 + 10 + HOLD),
        s.disconnect("max", conn("max"), T0 + 11 + HOLD, HOLD),
        s.fail_start("s1", ErrorCode.NO_SERVER_AVAILABLE, "¡sin servidor!", T0 + 12 + HOLD, HOLD),
        s.resume("max", tokh("max"), conn("max", "n2"), T0 + 13 + HOLD),
        s.begin_start("ann", T0 + 14 + HOLD),
        s.finish_start("s1", "gs-9", "[::1]:7777", T0 + 15 + HOLD),
        s.leave_session("li", T0 + 16 + HOLD),
        s.get_session("s1"),
        s.get_session("s2"),
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
    assert expected[-2] == ("ok", {"open_sessions": 0, "held_seats": 0})
