
"""Lobby data in both stores: settings updates, attributes, visibility, lock,
join codes, bans and host promotion (the conformance harness of
test_store_conformance: every test runs against MemoryStore and RedisStore)."""

from __future__ import annotations

import pytest

from lobby.errors import ErrorCode
from lobby.protocol import attr_value
from lobby.session import bus_view
from tests.test_store_conformance import (
    PW,
    T0,
    Harness,
    add_players,
    fails,
    ids,
    open_ids,
    store,
    summary,
)

__all__ = ["store"]  # the fixture, imported so that pytest finds it here


async def test_update_session_is_host_only_in_waiting_and_publishes(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol", "dave")
    await h.store.create_session("alice", "s1", "", 4, None, T0,
                                 attributes={"mode": "ctf", "skill": 3})
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.join_session("carol", "s1", None, T0 + 2)
    await h.drain(2)

    rec = await h.store.update_session("alice", {
        "name": "Dust CTF", "max": 6, "pw": PW, "vis": "unlisted", "locked": True,
        "attrs": {"skill": None, "map": "dust", "ranked": False},
    }, T0 + 3)
    assert (rec["name"], rec["max"], rec["pw"], rec["vis"], rec["locked"]) == (
        "Dust CTF", 6, PW, "unlisted", True)
    assert rec["attrs"] == {"mode": "ctf", "map": "dust", "ranked": False}
    assert (rec["v"], rec["updated"], rec["active"]) == (4, T0 + 3, T0 + 3)
    assert await h.store.get_session("s1") == rec
    assert await h.drain(1) == [("s1", {"e": "session_updated", "sid": "s1", "v": 4,
        "s": bus_view(rec)})]

    # password None removes it; an update of nothing still versions the session
    rec = await h.store.update_session("alice", {"pw": None}, T0 + 4)
    assert rec["pw"] is None and rec["v"] == 5
    rec = await h.store.update_session("alice", {}, T0 + 5)
    assert rec["v"] == 6 and rec["attrs"] == {"mode": "ctf", "map": "dust", "ranked": False}

    await fails(ErrorCode.NOT_HOST, h.store.update_session("bob", {"name": "mine"}, T0 + 6))
    err = await fails(ErrorCode.BAD_REQUEST, h.store.update_session("alice", {"max": 2}, T0 + 6))
    assert err.message == "max_players is below the number of players"
    assert (await h.store.update_session("alice", {"max": 3}, T0 + 6))["max"] == 3
    many = {f"k{i}": i for i in range(14)}  # 3 already set: 17 in all
    err = await fails(ErrorCode.BAD_REQUEST,
                      h.store.update_session("alice", {"attrs": many}, T0 + 7))
    assert err.message == "too many attributes after this update"
    # ... but deleting in the same update makes room
    many.update(mode=None, map=None)
    rec = await h.store.update_session("alice", {"attrs": many}, T0 + 7)
    assert len(rec["attrs"]) == 15
    await h.store.begin_start("alice", T0 + 8)
    await fails(ErrorCode.SESSION_NOT_WAITING,
                h.store.update_session("alice", {"name": "late"}, T0 + 9))
    await fails(ErrorCode.NOT_IN_SESSION, h.store.update_session("dave", {}, T0 + 9))
    assert [e for _, e, _ in summary(await h.drain(4))] == ["session_updated"] * 4


async def test_visibility_and_lock_keep_sessions_off_the_list(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol", "dave")
    await h.store.create_session("alice", "s1", "", 4, None, T0, visibility="unlisted")
    await h.store.create_session("bob", "s2", "", 4, None, T0 + 1)
    assert await open_ids(h) == ["s2"]
    # unlisted is not private: the id (or the code) still joins
    assert ids(await h.store.join_session("carol", "s1", None, T0 + 2)) == ["alice", "carol"]

    await h.store.update_session("bob", {"locked": True}, T0 + 3)
    assert await open_ids(h) == []
    await fails(ErrorCode.SESSION_LOCKED, h.store.join_session("dave", "s2", None, T0 + 4))
    await h.store.update_session("alice", {"vis": "public"}, T0 + 5)
    assert await open_ids(h) == ["s1"]
    rec = await h.store.update_session("bob", {"locked": False}, T0 + 6)
    assert ids(rec) == ["bob"] and await open_ids(h) == ["s2", "s1"]
    assert ids(await h.store.join_session("dave", "s2", None, T0 + 7)) == ["bob", "dave"]
    # A full room that gets a seat more is listed again in its creation slot.
    await h.store.update_session("alice", {"max": 2}, T0 + 8)
    assert await open_ids(h) == ["s2"]
    await h.store.update_session("alice", {"max": 3}, T0 + 9)
    assert await open_ids(h) == ["s2", "s1"]
    assert await h.store.stats() == {"open_sessions": 2, "held_seats": 0}


async def test_join_codes_are_unique_among_live_sessions(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol", "dave")
    a = await h.store.create_session("alice", "s1", "", 4, None, T0, codes=["AAAAAA", "BBBBBB"])
    b = await h.store.create_session("bob", "s2", "", 4, None, T0, codes=["AAAAAA", "BBBBBB"])
    assert (a["code"], b["code"]) == ("AAAAAA", "BBBBBB")
    await fails(ErrorCode.INTERNAL,
                h.store.create_session("carol", "s3", "", 4, None, T0, codes=["AAAAAA"]))
    assert await h.store.session_of_code("AAAAAA") == "s1"
    assert await h.store.session_of_code("BBBBBB") == "s2"
    assert await h.store.session_of_code("CCCCCC") is None
    # The code lives as long as its session, and is free again after.
    await h.store.leave_session("alice", T0 + 1)
    assert await h.store.session_of_code("AAAAAA") is None
    c = await h.store.create_session("carol", "s3", "", 4, None, T0 + 2, codes=["AAAAAA"])
    assert c["code"] == "AAAAAA" and await h.store.session_of_code("AAAAAA") == "s3"
    await h.store.complete("s3", "completed", T0 + 3)
    assert await h.store.session_of_code("AAAAAA") is None
    # Random codes by default, from the alphabet without look-alikes.
    d = await h.store.create_session("dave", "s4", "", 4, None, T0 + 4)
    assert await h.store.session_of_code(d["code"]) == "s4"


async def test_kick_with_ban_refuses_the_player_for_the_session_life(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.join_session("carol", "s1", None, T0 + 2)
    await h.store.kick("alice", "carol", T0 + 3)  # no ban: may come back
    await h.store.join_session("carol", "s1", None, T0 + 4)
    rec = await h.store.kick("alice", "bob", T0 + 5, ban=True)
    assert ids(rec) == ["alice", "carol"] and rec["bans"] == {"bob": True}
    await fails(ErrorCode.BANNED, h.store.join_session("bob", "s1", None, T0 + 6))
    # BANNED comes first: a banned player learns nothing of the room's state.
    await h.store.update_session("alice", {"locked": True}, T0 + 7)
    await fails(ErrorCode.BANNED, h.store.join_session("bob", "s1", None, T0 + 8))
    # The ban survives a change of host.
    await h.store.leave_session("alice", T0 + 9)
    await h.store.update_session("carol", {"locked": False}, T0 + 10)
    await fails(ErrorCode.BANNED, h.store.join_session("bob", "s1", None, T0 + 11))


async def test_promote_player(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.drain(1)
    err = await fails(ErrorCode.BAD_REQUEST, h.store.promote("alice", "alice", T0 + 2))
    assert err.message == "you are the host already"
    await fails(ErrorCode.NOT_IN_SESSION, h.store.promote("alice", "carol", T0 + 2))
    await fails(ErrorCode.NOT_HOST, h.store.promote("bob", "bob", T0 + 2))
    await fails(ErrorCode.NOT_IN_SESSION, h.store.promote("carol", "bob", T0 + 2))
    rec = await h.store.promote("alice", "bob", T0 + 3)
    assert (rec["host"], rec["v"], ids(rec)) == ("bob", 3, ["alice", "bob"])
    assert await h.drain(1) == [
        ("s1", {"e": "host_changed", "host_id": "bob", "sid": "s1", "v": 3, "s": bus_view(rec)})]
    await fails(ErrorCode.NOT_HOST, h.store.kick("alice", "bob", T0 + 4))
    # Any state: the host of a running match may hand it on.
    await h.store.begin_start("bob", T0 + 5)
    assert (await h.store.promote("bob", "alice", T0 + 6))["host"] == "alice"


async def test_update_player_attributes(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await fails(ErrorCode.NOT_IN_SESSION, h.store.update_player("alice", {"team": "red"}, T0))
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.drain(1)
    rec = await h.store.update_player("bob", {"team": "red", "level": attr_value(7.0)}, T0 + 2)
    assert rec["members"][1]["attrs"] == {"team": "red", "level": 7}
    assert rec["members"][0]["attrs"] == {}
    assert await h.drain(1) == [("s1", {
        "e": "player_updated", "player_id": "bob", "sid": "s1", "v": 3, "s": bus_view(rec)})]
    rec = await h.store.update_player("bob", {"team": None, "ready": True}, T0 + 3)
    assert rec["members"][1]["attrs"] == {"level": 7, "ready": True}
    err = await fails(ErrorCode.BAD_REQUEST, h.store.update_player(
        "bob", {f"k{i}": i for i in range(7)}, T0 + 4))
    assert err.message == "too many attributes after this update"
    # A new session starts with none.
    await h.store.leave_session("bob", T0 + 5)
    await h.store.create_session("bob", "s2", "", 4, None, T0 + 6)
    assert (await h.store.get_session("s2") or {})["members"][0]["attrs"] == {}


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_restore_brings_codes_and_indexes_back(store: Harness) -> None:
    h = store
    await add_players(h, "alice")
    rec = await h.store.create_session("alice", "s1", "", 4, None, T0, codes=["RESTOR"],
                                       attributes={"mode": "ctf"})
    client = h.client  # type: ignore[attr-defined]
    prefix = h.store.keys.bucket_prefix(0)  # type: ignore[attr-defined]
    assert await client.zrange(f"{prefix}ix:mode=s:ctf", 0, -1) == [b"s1"]
    await client.flushdb()
    assert await h.store.restore("gen-1", [rec], 30_000, T0 + 1) == ("gen-1", 1)
    h.epoch = "gen-1"
    assert await h.store.session_of_code("RESTOR") == "s1"
    assert await client.zrange(f"{prefix}ix:mode=s:ctf", 0, -1) == [b"s1"]
    assert await open_ids(h) == ["s1"]
