"""Room life in both stores: ready flags and start rules, presence, chat.

Part of the conformance suite (same harness as tests/test_store_conformance.py):
every test runs against MemoryStore and RedisStore, clocks are explicit numbers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from lobby.errors import ErrorCode
from lobby.session import bus_view, public_session
from lobby.store.base import CHAT_KEEP, CHAT_RATE, CHAT_WINDOW_MS, PlayerInfo, ResumeResult
from tests.test_store_conformance import (
    HOLD,
    T0,
    Harness,
    RedisHarness,
    add_players,
    conn,
    fails,
    ids,
    open_harness,
    outcome,
    summary,
    sweep,
    tokh,
)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    harness = await open_harness(request.param, request)
    try:
        yield harness
    finally:
        await harness.close()


# ready and start rules ---------------------------------------------------------


async def test_set_ready(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    joined = await h.store.join_session("bob", "s1", None, T0 + 1)
    assert all("ready" not in m for m in joined["members"])
    assert [p["ready"] for p in public_session(joined)["players"]] == [False, False]
    await h.drain(1)

    rec = await h.store.set_ready("bob", True, T0 + 2)
    assert rec["members"][1]["ready"] is True and "ready" not in rec["members"][0]
    assert (rec["v"], rec["updated"], rec["active"]) == (3, T0 + 2, T0 + 2)
    assert await h.store.get_session("s1") == rec
    assert [p["ready"] for p in public_session(rec)["players"]] == [False, True]
    assert await h.drain(1) == [("s1", {
        "e": "player_ready", "player_id": "bob", "ready": True, "sid": "s1", "v": 3,
            "s": bus_view(rec)})]

    # Setting the flag it already has changes nothing and tells nobody.
    assert await h.store.set_ready("bob", True, T0 + 3) == rec
    await h.drain(0)

    back = await h.store.set_ready("bob", False, T0 + 4)
    assert "ready" not in back["members"][1] and back["v"] == 4
    assert summary(await h.drain(1)) == [("s1", "player_ready", 4)]

    await fails(ErrorCode.NOT_IN_SESSION, h.store.set_ready("carol", True, T0 + 5))
    await fails(ErrorCode.NOT_AUTHENTICATED, h.store.set_ready("ghost", True, T0 + 5))
    await h.store.begin_start("alice", T0 + 6)
    await fails(ErrorCode.SESSION_NOT_WAITING, h.store.set_ready("bob", True, T0 + 7))
    await h.drain(0)


async def test_start_rules(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol", "dave")
    plain = await h.store.create_session("dave", "s0", "", 4, None, T0)
    # Defaults stay out of the record (as in records older than the rules).
    assert "rule" not in plain and "minp" not in plain
    view = public_session(plain)
    assert (view["start_rule"], view["min_players"]) == ("host", 1)

    rec = await h.store.create_session(
        "alice", "s1", "", 4, None, T0, start_rule="all_ready", min_players=3)
    assert (rec["rule"], rec["minp"]) == ("all_ready", 3)
    assert (public_session(rec)["start_rule"], public_session(rec)["min_players"]) == (
        "all_ready", 3)

    err = await fails(ErrorCode.NOT_ENOUGH_PLAYERS, h.store.begin_start("alice", T0 + 1))
    assert "3" in err.message
    await h.store.join_session("bob", "s1", None, T0 + 2)
    await h.store.join_session("carol", "s1", None, T0 + 3)
    # The message names who is not ready, the host included, in join order.
    err = await fails(ErrorCode.NOT_READY, h.store.begin_start("alice", T0 + 4))
    assert err.message == "not ready: Alice, Bob, Carol"
    await h.store.set_ready("alice", True, T0 + 5)
    await h.store.set_ready("carol", True, T0 + 6)
    err = await fails(ErrorCode.NOT_READY, h.store.begin_start("alice", T0 + 7))
    assert err.message == "not ready: Bob"
    # Refusals change nothing.
    assert (await h.store.get_session("s1") or {})["state"] == "WAITING"
    ready = await h.store.set_ready("bob", True, T0 + 8)
    await fails(ErrorCode.NOT_HOST, h.store.begin_start("bob", T0 + 9))
    started = await h.store.begin_start("alice", T0 + 10)
    assert started["state"] == "CONNECTING" and started["v"] == ready["v"] + 1

    # A failed start asks everyone to confirm again.
    back = await h.store.fail_start("s1", "NO_SERVER_AVAILABLE", "none", T0 + 11, HOLD)
    assert back is not None and all("ready" not in m for m in back["members"])
    events = await h.drain(6)
    assert events[-1][1]["e"] == "session_start_failed" and events[-1][1]["s"] == bus_view(back)
    await fails(ErrorCode.NOT_READY, h.store.begin_start("alice", T0 + 12))

    # Under the host rule ready flags are advice; min_players still holds.
    await h.store.leave_session("dave", T0 + 13)
    await h.store.create_session("dave", "s2", "", 4, None, T0 + 14, min_players=2)
    await fails(ErrorCode.NOT_ENOUGH_PLAYERS, h.store.begin_start("dave", T0 + 15))
    await h.store.leave_session("carol", T0 + 16)
    await h.store.join_session("carol", "s2", None, T0 + 17)
    assert (await h.store.begin_start("dave", T0 + 18))["state"] == "CONNECTING"
    await h.drain()


async def test_update_session_sets_the_rule_and_resets_ready_flags(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0, start_rule="all_ready")
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.store.set_ready("alice", True, T0 + 2)
    await h.store.set_ready("bob", True, T0 + 3)
    rec = await h.store.update_session("alice", {"name": "renamed"}, T0 + 4)
    # New settings: everyone confirms again.
    assert all("ready" not in m for m in rec["members"]) and rec["rule"] == "all_ready"
    err = await fails(ErrorCode.NOT_READY, h.store.begin_start("alice", T0 + 5))
    assert err.message == "not ready: Alice, Bob"

    rec = await h.store.update_session("alice", {"rule": "host", "minp": 3}, T0 + 6)
    assert "rule" not in rec and rec["minp"] == 3
    await fails(ErrorCode.NOT_ENOUGH_PLAYERS, h.store.begin_start("alice", T0 + 7))
    await fails(ErrorCode.BAD_REQUEST, h.store.update_session("alice", {"minp": 5}, T0 + 8))
    await fails(ErrorCode.BAD_REQUEST,
                h.store.update_session("alice", {"max": 2, "minp": 3}, T0 + 8))
    rec = await h.store.update_session("alice", {"minp": 1, "max": 2}, T0 + 9)
    assert "minp" not in rec and rec["max"] == 2
    assert (await h.store.begin_start("alice", T0 + 10))["state"] == "CONNECTING"
    events = await h.drain(6)
    assert [ev["e"] for _, ev in events] == [
        "player_joined", "player_ready", "player_ready", "session_updated", "session_updated",
        "session_updated"]


# presence --------------------------------------------------------------------


async def test_presence_of_a_dropped_member(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.drain(1)

    held = await h.store.disconnect("bob", conn("bob"), T0 + 10, HOLD)
    assert held is not None and held["members"][1]["off"] == T0 + 10 + HOLD
    players = public_session(held)["players"]
    assert [(p["player_id"], p["connected"]) for p in players] == [
        ("alice", True), ("bob", False)]
    # connected_players keeps its meaning: every member, dropped ones too.
    assert public_session(held)["connected_players"] == ["alice", "bob"]
    assert await h.drain(1) == [("s1", {
        "e": "player_disconnected", "player_id": "bob", "hold_until": (T0 + 10 + HOLD) / 1000,
        "sid": "s1", "v": 3, "s": bus_view(held)})]
    # A second report of the same drop is a no-op.
    assert await h.store.disconnect("bob", conn("bob"), T0 + 11, HOLD) is None
    await h.drain(0)

    res = await h.store.resume("bob", tokh("bob"), conn("bob", "n2"), T0 + 20)
    assert res is not None and res.reconnected
    assert res.session is not None and "off" not in res.session["members"][1]
    assert public_session(res.session)["players"][1]["connected"] is True
    assert await h.drain(1) == [("s1", {
        "e": "player_reconnected", "player_id": "bob", "sid": "s1", "v": 4,
            "s": bus_view(res.session)})]

    # A resume that replaces a live socket is no reconnection: nobody is told.
    again = await h.store.resume("bob", tokh("bob"), conn("bob", "n3"), T0 + 21)
    assert again == ResumeResult(PlayerInfo("bob", "Bob", "s1"), res.session, False)
    assert summary(await h.drain(1)) == [("node:n2", "replaced", None)]

    # A player in no session has no one to tell.
    assert await h.store.disconnect("carol", conn("carol"), T0 + 22, HOLD) is None
    await h.drain(0)


# chat ------------------------------------------------------------------------


def message(seq: int, pid: str, text: str, now: int) -> dict[str, Any]:
    return {"seq": seq, "player_id": pid, "name": pid.title(), "text": text, "sent_at": now / 1000}


async def test_chat_numbers_keeps_and_publishes(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob", "carol")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    before = await h.store.get_session("s1")
    await h.drain(1)
    assert await h.store.chat_history("s1", "alice") == []

    texts = ["hi", "Zoë 🎮 \"quoted\" / \\ back", "two\nlines"]
    sent = []
    for i, text in enumerate(texts):
        sent.append(await h.store.send_chat("s1", ["alice", "bob"][i % 2], text, T0 + 10 + i))
    assert sent == [message(1, "alice", texts[0], T0 + 10), message(2, "bob", texts[1], T0 + 11),
                    message(3, "alice", texts[2], T0 + 12)]
    assert await h.drain(3) == [("s1", {"e": "chat_message", "sid": "s1", "m": m}) for m in sent]
    assert await h.store.chat_history("s1", "bob") == sent
    # Chat is not a change of the session: no version, no record change.
    assert await h.store.get_session("s1") == before

    # Members only.
    await fails(ErrorCode.NOT_IN_SESSION, h.store.send_chat("s1", "carol", "x", T0 + 20))
    await fails(ErrorCode.NOT_IN_SESSION, h.store.chat_history("s1", "carol"))
    await fails(ErrorCode.NOT_IN_SESSION, h.store.send_chat("nope", "alice", "x", T0 + 20))
    # A kicked member gets nothing more.
    await h.store.kick("alice", "bob", T0 + 21)
    await fails(ErrorCode.NOT_IN_SESSION, h.store.send_chat("s1", "bob", "x", T0 + 22))
    await fails(ErrorCode.NOT_IN_SESSION, h.store.chat_history("s1", "bob"))
    # A joiner gets what was said before with the join (one atomic step).
    rec, chat = await h.store.join_session_chat("carol", "s1", None, T0 + 23)
    assert ids(rec) == ["alice", "carol"] and chat == sent
    assert await h.store.chat_history("s1", "carol") == sent
    assert summary(await h.drain(2)) == [("s1", "player_left", 3), ("s1", "player_joined", 4)]


async def test_chat_keeps_the_last_fifty(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    # One message a second stays within the rate.
    for i in range(CHAT_KEEP + 10):
        await h.store.send_chat("s1", "alice", f"m{i + 1}", T0 + 1000 * i)
    kept = await h.store.chat_history("s1", "alice")
    assert [m["seq"] for m in kept] == list(range(11, CHAT_KEEP + 11))
    assert kept[-1] == message(CHAT_KEEP + 10, "alice", f"m{CHAT_KEEP + 10}",
                               T0 + 1000 * (CHAT_KEEP + 9))
    await h.drain(CHAT_KEEP + 10)


async def test_chat_rate_per_player(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0)
    for i in range(CHAT_RATE):
        await h.store.send_chat("s1", "alice", f"a{i}", T0 + i)
    err = await fails(ErrorCode.RATE_LIMITED, h.store.send_chat("s1", "alice", "x", T0 + 10))
    assert "wait" in err.message
    # The window slides: the first message leaves it CHAT_WINDOW_MS after it was sent.
    await fails(ErrorCode.RATE_LIMITED,
                h.store.send_chat("s1", "alice", "x", T0 + CHAT_WINDOW_MS - 1))
    # Others are not limited by alice; refused messages were not numbered.
    assert (await h.store.send_chat("s1", "bob", "b", T0 + 11))["seq"] == CHAT_RATE + 1
    assert (await h.store.send_chat("s1", "alice", "y", T0 + CHAT_WINDOW_MS))["seq"] == (
        CHAT_RATE + 2)
    await fails(ErrorCode.RATE_LIMITED,
                h.store.send_chat("s1", "alice", "z", T0 + CHAT_WINDOW_MS))
    await h.drain(CHAT_RATE + 3)


async def test_chat_goes_with_its_session(store: Harness) -> None:
    h = store
    await add_players(h, "alice", "bob")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.send_chat("s1", "alice", "hello", T0 + 1)
    await h.store.leave_session("alice", T0 + 2)
    if isinstance(h, RedisHarness):
        # Nothing of the session is left behind in Redis.
        assert await h.client.keys(f"{h.store.keys.bucket_prefix(0)}c*") == []
    # A new session under the same id starts a new log and a new count.
    await h.store.create_session("bob", "s1", "", 4, None, T0 + 3)
    assert await h.store.chat_history("s1", "bob") == []
    assert (await h.store.send_chat("s1", "bob", "again", T0 + 4))["seq"] == 1
    # So does a session that ends by a timeout or the game server.
    change = await h.store.complete("s1", "completed", T0 + 5)
    assert change.ended == "completed"
    if isinstance(h, RedisHarness):
        assert await h.client.keys(f"{h.store.keys.bucket_prefix(0)}c*") == []
    await h.drain()


# the two stores side by side -------------------------------------------------


async def roomlife_run(h: Harness) -> list[Any]:
    s = h.store
    trace: list[Any] = []
    for pid, pname in {"zoe": "Zoë 🎮", "li": "李", "max": "Max \"the\" /Ω\\"}.items():
        trace.append(await s.new_player(pid, pname, tokh(pid), conn(pid), T0))
    steps = [
        s.create_session("zoe", "s1", "", 3, None, T0 + 1, codes=["ZZZZZZ"],
                         start_rule="all_ready", min_players=2),
        s.begin_start("zoe", T0 + 2),
        s.join_session("li", "s1", None, T0 + 3),
        s.set_ready("li", True, T0 + 4),
        s.begin_start("zoe", T0 + 5),
        s.send_chat("s1", "li", "ready? «да» \n ✓", T0 + 6),
        s.send_chat("s1", "max", "not a member", T0 + 7),
        s.disconnect("li", conn("li"), T0 + 8, HOLD),
        s.set_ready("zoe", True, T0 + 9),
        s.join_session("max", "s1", None, T0 + 10),
        s.chat_history("s1", "max"),
        s.set_ready("max", True, T0 + 11),
        s.begin_start("zoe", T0 + 12),
        s.fail_start("s1", "NO_SERVER_AVAILABLE", "x", T0 + 13, HOLD),
        s.resume("li", tokh("li"), conn("li", "n2"), T0 + 14),
        s.send_chat("s1", "zoe", "again", T0 + 15),
        s.chat_history("s1", "li"),
        sweep(h, T0 + 16 + HOLD),
        s.get_session("s1"),
    ]
    for step in steps:
        trace.append(await outcome(step))
        trace.append(await h.drain())
    return trace


async def test_memory_and_redis_agree_on_room_life(request: pytest.FixtureRequest) -> None:
    memory = await open_harness("memory", request)
    redis_h = await open_harness("redis", request)
    try:
        expected = await roomlife_run(memory)
        actual = await roomlife_run(redis_h)
    finally:
        await memory.close()
        await redis_h.close()
    for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
        assert got == want, (i, want, got)
    assert ids(expected[-2][1]) == ["zoe", "li", "max"]
