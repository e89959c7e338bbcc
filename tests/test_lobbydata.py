"""Lobby data over real sockets, in embedded and in Redis mode: settings, attributes,
visibility and join codes, lock, bans, host promotion, integral floats."""

from __future__ import annotations

import asyncio
from typing import Any

from lobby.app import LobbyNode


async def raw_request(player: Any, text: str, rid: str) -> dict[str, Any]:
    """A frame that json.dumps would not write, and its reply."""
    fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    player.replies[rid] = fut
    await player.ws.send(text)
    return await asyncio.wait_for(fut, 10)


async def test_integral_floats_count_as_integers(node: LobbyNode, connect_player) -> None:
    host = await connect_player(node, "godot")
    await host.error("create_session", "BAD_REQUEST", max_players=4.5)
    await host.error("create_session", "BAD_REQUEST", max_players=True)
    await host.error("create_session", "BAD_REQUEST", max_players="4")
    session = (await host.ok("create_session", max_players=4.0))["session"]
    assert session["max_players"] == 4 and isinstance(session["max_players"], int)
    other = await connect_player(node, "browser")
    assert len((await other.ok("list_sessions", limit=5.0))["sessions"]) == 1
    await other.error("list_sessions", "BAD_REQUEST", limit=5.5)
    assert (await host.ok("update_session", max_players=6.0))["session"]["max_players"] == 6
    await host.error("update_session", "BAD_REQUEST", max_players=6.5)


async def test_attributes_on_sessions_and_players(node: LobbyNode, connect_player) -> None:
    host = await connect_player(node, "alice")
    attrs = {"mode": "ctf", "map": "dust", "skill": 2.5, "ranked": True, "slots": 4.0}
    session = (await host.ok("create_session", attributes=attrs))["session"]
    assert session["attributes"] == {**attrs, "slots": 4}
    assert session["players"][0]["attributes"] == {}

    bad = [
        {f"k{i}": 1 for i in range(17)},
        {"Mode": "ctf"}, {"1mode": 1}, {"m" * 33: 1}, {"mode": ""}, {"mode": "x" * 65},
        {"mode": "a\nb"}, {"mode": None}, {"mode": [1]}, {"mode": {"a": 1}},
    ]
    other = await connect_player(node, "bob")
    for value in bad:
        await other.error("create_session", "BAD_REQUEST", attributes=value)
    # Non-finite numbers (JSON has none; some writers emit them anyway)
    reply = await raw_request(
        other, '{"type":"create_session","id":"inf","attributes":{"x":Infinity}}', "inf")
    assert reply["ok"] is False and reply["error"]["code"] == "BAD_REQUEST"
    assert (await other.ok("create_session", attributes={"mode": "é" * 64}))["session"][
        "attributes"] == {"mode": "é" * 64}
    await other.ok("leave_session")

    await other.ok("join_session", session_id=session["session_id"])
    assert await other.ok("update_player", attributes={"team": "red", "level": 3.0}) == {
        "type": "update_player", "id": other._next_id, "ok": True}
    for p in (host, other):
        ev = await p.event("player_updated")
        assert ev["player_id"] == other.player_id
        assert ev["session"]["players"][1]["attributes"] == {"team": "red", "level": 3}
    await other.error("update_player", "BAD_REQUEST", attributes={f"k{i}": 1 for i in range(9)})
    await other.ok("update_player", attributes={"team": None})
    assert (await host.event("player_updated"))["session"]["players"][1]["attributes"] == {
        "level": 3}

    updated = await host.ok("update_session", attributes={"skill": None, "map": "aztec"})
    assert updated["session"]["attributes"] == {"mode": "ctf", "map": "aztec", "ranked": True,
                                                "slots": 4}
    ev = await other.event("session_updated")
    assert ev["session"] == updated["session"] and ev["session_id"] == session["session_id"]


async def test_update_session_settings(node: LobbyNode, connect_player) -> None:
    host = await connect_player(node, "alice")
    guest = await connect_player(node, "bob")
    third = await connect_player(node, "carol")
    sid = (await host.ok("create_session", max_players=4))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid)
    await guest.error("update_session", "NOT_HOST", name="mine")
    await third.error("update_session", "NOT_IN_SESSION", name="mine")
    await host.error("update_session", "BAD_REQUEST", max_players=1)
    await host.error("update_session", "BAD_REQUEST", max_players=17)  # the cap
    await host.error("update_session", "BAD_REQUEST", visibility="secret")
    await host.error("update_session", "BAD_REQUEST", locked="yes")

    s = (await host.ok("update_session", name="Dust", password="hunter2", max_players=3))["session"]
    assert (s["name"], s["has_password"], s["max_players"]) == ("Dust", True, 3)
    assert (await guest.event("session_updated"))["session"]["has_password"] is True
    await third.error("join_session", "WRONG_PASSWORD", session_id=sid)
    await third.ok("join_session", session_id=sid, password="hunter2")
    await host.error("update_session", "BAD_REQUEST", max_players=2)  # 3 are in
    await third.ok("leave_session")
    s = (await host.ok("update_session", password=""))["session"]
    assert s["has_password"] is False
    await third.ok("join_session", session_id=sid)
    await third.ok("leave_session")

    await host.ok("start_session")
    await host.error("update_session", "SESSION_NOT_WAITING", name="late")


async def test_unlisted_rooms_and_join_codes(node: LobbyNode, connect_player) -> None:
    host = await connect_player(node, "alice")
    friend = await connect_player(node, "bob")
    stranger = await connect_player(node, "carol")
    mine = (await host.ok("create_session", visibility="unlisted", max_players=3))["session"]
    code = mine["join_code"]
    assert mine["visibility"] == "unlisted" and len(code) == 6
    assert set(code) <= set("23456789ABCDEFGHJKLMNPQRSTUVWXYZ")
    public = (await stranger.ok("create_session"))["session"]
    listed = (await friend.ok("list_sessions"))["sessions"]
    # Not listed; and a listed session's code is not shown to non-members.
    assert [s["session_id"] for s in listed] == [public["session_id"]]
    assert listed[0]["join_code"] is None
    await stranger.ok("leave_session")

    await friend.error("join_session", "SESSION_NOT_FOUND", join_code="ZZZZZZ")
    await friend.error("join_session", "SESSION_NOT_FOUND", join_code="not a code at all")
    await friend.error("join_session", "BAD_REQUEST")  # neither id nor code
    await friend.error("join_session", "BAD_REQUEST", session_id=mine["session_id"],
                       join_code=code)
    typed = f" {code[:3].lower()}-{code[3:].lower()} "
    joined = (await friend.ok("join_session", join_code=typed))["session"]
    assert joined["session_id"] == mine["session_id"] and joined["join_code"] == code
    ev = await host.event("player_joined")
    assert ev["session"]["join_code"] == code  # members see it in events too
    await host.ok("update_session", visibility="public")
    ev = await friend.event("session_updated")
    assert ev["session"]["visibility"] == "public" and ev["session"]["join_code"] == code
    listed = (await stranger.ok("list_sessions"))["sessions"]
    assert [(s["session_id"], s["join_code"]) for s in listed] == [(mine["session_id"], None)]


async def test_code_guesses_count_against_the_password_limit(node: LobbyNode, connect_player
                                                             ) -> None:
    host = await connect_player(node, "alice")
    code = (await host.ok("create_session"))["session"]["join_code"]
    guesser = await connect_player(node, "mallory")
    for _ in range(5):
        await guesser.error("join_session", "SESSION_NOT_FOUND", join_code="222222")
    await guesser.error("join_session", "RATE_LIMITED", join_code=code)


async def test_lock_ban_and_promote(node: LobbyNode, connect_player) -> None:
    host = await connect_player(node, "alice")
    guest = await connect_player(node, "bob")
    pest = await connect_player(node, "mallory")
    late = await connect_player(node, "carol")
    s = (await host.ok("create_session", max_players=4))["session"]
    sid, code = s["session_id"], s["join_code"]
    await guest.ok("join_session", session_id=sid)
    await pest.ok("join_session", join_code=code)

    await host.ok("kick_player", player_id=pest.player_id, ban=True)
    assert (await pest.event("kicked"))["session_id"] == sid
    await pest.error("join_session", "BANNED", session_id=sid)
    await pest.error("join_session", "BANNED", join_code=code)

    locked = (await host.ok("update_session", locked=True))["session"]
    assert locked["locked"] is True
    assert (await guest.event("session_updated"))["session"]["locked"] is True
    assert (await late.ok("list_sessions"))["sessions"] == []
    await late.error("join_session", "SESSION_LOCKED", session_id=sid)
    await host.ok("update_session", locked=False)
    assert [x["session_id"] for x in (await late.ok("list_sessions"))["sessions"]] == [sid]

    await guest.error("promote_player", "NOT_HOST", player_id=host.player_id)
    await host.error("promote_player", "NOT_IN_SESSION", player_id=late.player_id)
    await host.error("promote_player", "BAD_REQUEST", player_id=host.player_id)
    assert await host.ok("promote_player", player_id=guest.player_id) == {
        "type": "promote_player", "id": host._next_id, "ok": True}
    for p in (host, guest):
        ev = await p.event("host_changed")
        assert ev["host_id"] == guest.player_id and ev["session"]["host_id"] == guest.player_id
    await host.error("update_session", "NOT_HOST", name="not mine now")
    await guest.ok("kick_player", player_id=host.player_id)  # the new host rules
    assert (await host.event("kicked"))["session_id"] == sid
    await host.ok("join_session", session_id=sid)  # a kick without ban


async def test_update_pushed_across_nodes(make_node, redis_url, connect_player) -> None:
    n1 = await make_node(redis_url=redis_url)
    n2 = await make_node(redis_url=redis_url)
    host = await connect_player(n1, "host")
    guest = await connect_player(n2, "guest")
    code = (await host.ok("create_session", visibility="unlisted"))["session"]["join_code"]
    await guest.ok("join_session", join_code=code.lower())
    await host.event("player_joined")
    reply = await host.ok("update_session", name="Dust 2", attributes={"map": "dust2"},
                          locked=True)
    ev = await guest.event("session_updated")
    assert ev["session"] == reply["session"]
    assert ev["session"]["name"] == "Dust 2" and ev["session"]["join_code"] == code
    await guest.ok("update_player", attributes={"team": "blue"})
    ev = await host.event("player_updated")
    assert ev["player_id"] == guest.player_id
    assert ev["session"]["players"][1]["attributes"] == {"team": "blue"}
    await host.ok("promote_player", player_id=guest.player_id)
    assert (await guest.event("host_changed"))["host_id"] == guest.player_id
