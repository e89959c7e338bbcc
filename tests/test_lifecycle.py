"""The whole session lifecycle over real sockets, in embedded and in Redis mode."""

from __future__ import annotations

import asyncio
from typing import Any

from lobby.app import LobbyNode

BOTH_EVENT_LOOPS = True  # conftest: every test on asyncio's loop and on uvloop's


async def test_full_lifecycle(node: LobbyNode, connect_player) -> None:
    host = await connect_player(node, "alice")
    guest = await connect_player(node, "bob")

    created = await host.ok("create_session", name="Friday night", max_players=4)
    session = created["session"]
    assert session["name"] == "Friday night"
    assert session["host_id"] == host.player_id
    assert session["session_state"] == "WAITING"
    assert session["player_count"] == 1 and session["max_players"] == 4
    assert session["players"] == [{"player_id": host.player_id, "name": "alice", "attributes": {},
                                   "ready": False, "connected": True}]
    assert session["server_endpoint"] is None and session["has_password"] is False
    sid = session["session_id"]

    listed = await guest.ok("list_sessions")
    assert [s["session_id"] for s in listed["sessions"]] == [sid]

    joined = await guest.ok("join_session", session_id=sid)
    assert joined["session"]["connected_players"] == [host.player_id, guest.player_id]
    ev = await host.event("player_joined")
    assert ev["session_id"] == sid and ev["player_id"] == guest.player_id
    assert ev["name"] == "bob" and ev["session"]["player_count"] == 2
    assert "ok" not in ev

    started = await host.ok("start_session")
    assert started["session"]["session_state"] == "CONNECTING"
    assert started["session"]["server_endpoint"] == "127.0.0.1:6060"
    for player in (host, guest):
        ev = await player.event("session_started")
        assert ev["server_endpoint"] == "127.0.0.1:6060" and ev["server_id"] == "static"
        assert ev["session"]["session_state"] == "CONNECTING"

    # A started session is no longer browsable or joinable.
    late = await connect_player(node, "carol")
    assert (await late.ok("list_sessions"))["sessions"] == []
    await late.error("join_session", "SESSION_NOT_WAITING", session_id=sid)

    await guest.ok("leave_session")
    ev = await host.event("player_left")
    assert ev["player_id"] == guest.player_id and ev["reason"] == "left"
    await host.ok("leave_session")
    await late.error("join_session", "SESSION_NOT_FOUND", session_id=sid)


async def test_join_reply_comes_before_later_events(node: LobbyNode, connect_player) -> None:
    host = await connect_player(node, "host")
    sid = (await host.ok("create_session", max_players=8))["session"]["session_id"]
    a = await connect_player(node, "a")
    b = await connect_player(node, "b")
    await a.ok("join_session", session_id=sid)
    await b.ok("join_session", session_id=sid)
    # a sees b join; the joiner itself gets its reply, not its own player_joined.
    ev = await a.event("player_joined")
    assert ev["player_id"] == b.player_id
    assert ev["session"]["version"] > 0
    await asyncio.sleep(0)
    assert b.no_event()


async def test_not_authenticated_before_hello(node: LobbyNode, connect_player) -> None:
    anon = await connect_player(node, None)
    for rtype, fields in [("create_session", {}), ("list_sessions", {}), ("ping", {}),
                          ("join_session", {"session_id": "x"}), ("leave_session", {}),
                          ("start_session", {}), ("kick_player", {"player_id": "p"})]:
        reply = await anon.error(rtype, "NOT_AUTHENTICATED", **fields)
        assert reply["type"] == rtype
    await anon.hello("late")
    await anon.ok("ping")
    await anon.error("hello", "BAD_REQUEST")


async def test_errors_of_each_rule(node: LobbyNode, connect_player) -> None:
    host = await connect_player(node, "host")
    other = await connect_player(node, "other")
    await other.error("leave_session", "NOT_IN_SESSION")
    await other.error("start_session", "NOT_IN_SESSION")
    await other.error("kick_player", "NOT_IN_SESSION", player_id="nobody")
    await other.error("join_session", "SESSION_NOT_FOUND", session_id="no-such-session")

    sid = (await host.ok("create_session", max_players=2))["session"]["session_id"]
    await host.error("create_session", "ALREADY_IN_SESSION")
    await host.error("join_session", "ALREADY_IN_SESSION", session_id=sid)
    await other.ok("join_session", session_id=sid)
    third = await connect_player(node, "third")
    await third.error("join_session", "SESSION_FULL", session_id=sid)
    assert (await third.ok("list_sessions"))["sessions"] == []  # full: not listed
    await other.error("start_session", "NOT_HOST")
    await other.error("kick_player", "NOT_HOST", player_id=host.player_id)
    await host.error("kick_player", "NOT_IN_SESSION", player_id=third.player_id)
    await host.error("kick_player", "BAD_REQUEST", player_id=host.player_id)
    await host.error("create_session", "BAD_REQUEST", max_players=99)


async def test_password_sessions(node: LobbyNode, connect_player) -> None:
    host = await connect_player(node, "host")
    created = await host.ok("create_session", password="hunter2")
    session = created["session"]
    assert session["has_password"] is True
    assert "password" not in str(created).replace("has_password", "")
    assert "hunter2" not in str(created)
    sid = session["session_id"]

    guest = await connect_player(node, "guest")
    listed = (await guest.ok("list_sessions"))["sessions"]
    assert listed[0]["has_password"] is True and "hash" not in str(listed)
    await guest.error("join_session", "WRONG_PASSWORD", session_id=sid)
    await guest.error("join_session", "WRONG_PASSWORD", session_id=sid, password="hunter3")
    joined = await guest.ok("join_session", session_id=sid, password="hunter2")
    assert joined["session"]["player_count"] == 2


async def test_wrong_passwords_are_rate_limited(node: LobbyNode, connect_player) -> None:
    host = await connect_player(node, "host")
    sid = (await host.ok("create_session", password="right"))["session"]["session_id"]
    guesser = await connect_player(node, "guesser")
    for _ in range(5):
        await guesser.error("join_session", "WRONG_PASSWORD", session_id=sid, password="wrong")
    await guesser.error("join_session", "RATE_LIMITED", session_id=sid, password="right")


async def test_request_rate_limit(make_node, connect_player) -> None:
    node = await make_node(rate_limit_per_second=1.0, rate_limit_burst=3)
    player = await connect_player(node, "spammer")  # hello uses one token
    await player.ok("ping")
    await player.ok("ping")
    reply = await player.error("ping", "RATE_LIMITED")
    assert reply["type"] == "ping"
    # Garbage is no way around the limit.
    await player.ws.send("not json")
    garbage = await asyncio.wait_for(player.orphans.get(), 5)
    assert garbage["error"]["code"] == "RATE_LIMITED" and garbage["type"] == "error"


async def test_host_migration_on_leave(node: LobbyNode, connect_player) -> None:
    host = await connect_player(node, "host")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    second = await connect_player(node, "second")
    third = await connect_player(node, "third")
    await second.ok("join_session", session_id=sid)
    await third.ok("join_session", session_id=sid)
    await host.ok("leave_session")
    for player in (second, third):
        left = await player.event("player_left")
        assert left["player_id"] == host.player_id and left["reason"] == "left"
        changed = await player.event("host_changed")
        assert changed["host_id"] == second.player_id  # the longest present
        assert changed["session"]["host_id"] == second.player_id
    await second.ok("kick_player", player_id=third.player_id)
    kicked = await third.event("kicked")
    assert kicked["session_id"] == sid
    # The room as it is without them (what a reconciling node sends too).
    assert third.player_id not in kicked["session"]["connected_players"]
    assert kicked["session"]["player_count"] == 1
    left = await second.event("player_left")
    assert left["reason"] == "kicked" and left["player_id"] == third.player_id
    # The kicked player is free to join again (or elsewhere).
    await third.ok("join_session", session_id=sid)
    await second.ok("leave_session")
    await third.ok("leave_session")
    await third.error("join_session", "SESSION_NOT_FOUND", session_id=sid)


async def test_list_pagination(node: LobbyNode, connect_player) -> None:
    ids = []
    for i in range(7):
        p = await connect_player(node, f"h{i}")
        ids.append((await p.ok("create_session"))["session"]["session_id"])
    browser = await connect_player(node, "browser")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        fields = {"limit": 3} if cursor is None else {"limit": 3, "cursor": cursor}
        page = await browser.ok("list_sessions", **fields)
        seen += [s["session_id"] for s in page["sessions"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]  # newest first, no gaps, no duplicates
    assert pages == 3
    await browser.error("list_sessions", "BAD_REQUEST", cursor="not-a-cursor")
    await browser.error("list_sessions", "BAD_REQUEST", limit=0)
    await browser.error("list_sessions", "BAD_REQUEST", limit=101)


async def test_start_failure_returns_to_waiting(make_mode_node, connect_player) -> None:
    from lobby.allocators.base import Allocation, NoServerAvailable

    class Exhausted:
        """An allocator with no servers until one is added (a real object, not a mock)."""

        def __init__(self) -> None:
            self.endpoint: str | None = None

        async def allocate(self, session_id: str, player_ids: list[str]) -> Allocation:
            if self.endpoint is None:
                raise NoServerAvailable("none")
            return Allocation("srv-1", self.endpoint)

        async def close(self) -> None:
            return None

    allocator = Exhausted()
    node = await make_mode_node(allocator=allocator)
    host = await connect_player(node, "host")
    guest = await connect_player(node, "guest")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid)
    await host.error("start_session", "NO_SERVER_AVAILABLE")
    for player in (host, guest):
        ev = await player.event("session_start_failed")
        assert ev["error"]["code"] == "NO_SERVER_AVAILABLE"
        assert ev["session"]["session_state"] == "WAITING"
    assert [s["session_id"] for s in (await guest.ok("list_sessions"))["sessions"]] == [sid]
    allocator.endpoint = "10.0.0.9:7777"
    started = await host.ok("start_session")
    assert started["session"]["server_endpoint"] == "10.0.0.9:7777"
    assert (await guest.event("session_started"))["server_endpoint"] == "10.0.0.9:7777"


async def test_double_clicked_start_starts_once(node: LobbyNode, connect_player) -> None:
    host = await connect_player(node, "host")
    await host.ok("create_session")
    # Both requests are on the wire before the first reply (a double click); the
    # cross-node race of two stores is in test_multinode.py.
    r1, r2 = await asyncio.gather(host.request("start_session"), host.request("start_session"))
    oks = [r for r in (r1, r2) if r["ok"]]
    errs = [r for r in (r1, r2) if not r["ok"]]
    assert len(oks) == 1 and len(errs) == 1
    assert errs[0]["error"]["code"] == "SESSION_NOT_WAITING"
    await host.event("session_started")
    await asyncio.sleep(0.05)
    assert host.no_event()


async def test_events_reach_deflate_and_plain_sockets_alike(
    make_mode_node: Any, connect_player: Any,
) -> None:
    """A fan-out frames an event once for the plain sockets and lets websockets
    compress it for a socket that negotiated permessage-deflate: both read the same."""
    node = await make_mode_node(ws_compression=True)
    host = await connect_player(node, "Host", compression="deflate")
    plain = await connect_player(node, "Plain")
    assert host.ws.protocol.extensions and not plain.ws.protocol.extensions
    sid = (await host.ok("create_session", name="room", max_players=4))["session"]["session_id"]
    await plain.ok("join_session", session_id=sid)
    joined = await host.event("player_joined")
    assert joined["player_id"] == plain.player_id
    third = await connect_player(node, "Third", compression="deflate")
    await third.ok("join_session", session_id=sid)
    seen = [await p.event("player_joined") for p in (host, plain)]
    assert seen[0] == seen[1] and seen[0]["player_id"] == third.player_id
    await host.ok("send_chat", text="über " * 50)  # long enough to be worth compressing
    chats = [await p.event("chat_message") for p in (host, plain, third)]
    assert all(c == chats[0] for c in chats) and chats[0]["text"] == "über " * 50
