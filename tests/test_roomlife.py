"""Room life over real sockets, in embedded and Redis mode: ready-check and start
rules, presence of dropped players, lobby chat with replay on resume."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from lobby.allocators.base import NoServerAvailable
from lobby.app import LobbyNode
from lobby.store.base import CHAT_KEEP, CHAT_RATE


class NoServers:
    async def allocate(self, session_id: str, player_ids: list[str]) -> Any:
        raise NoServerAvailable("none in this test")

    async def close(self) -> None:
        return None


def players(session: dict[str, Any]) -> list[tuple[str, bool, bool]]:
    return [(p["name"], p["ready"], p["connected"]) for p in session["players"]]


# ready and start rules ---------------------------------------------------------


async def test_all_ready_rule_gates_the_start(make_mode_node, connect_player) -> None:
    node = await make_mode_node()
    host = await connect_player(node, "alice")
    guest = await connect_player(node, "bob")
    await host.error("create_session", "BAD_REQUEST", max_players=4, min_players=5)
    await host.error("create_session", "BAD_REQUEST", start_rule="everyone")
    created = await host.ok("create_session", max_players=4, start_rule="all_ready",
                            min_players=2)
    session = created["session"]
    assert (session["start_rule"], session["min_players"]) == ("all_ready", 2)
    assert players(session) == [("alice", False, True)]
    sid = session["session_id"]

    refused = await host.error("start_session", "NOT_ENOUGH_PLAYERS")
    assert "2" in refused["error"]["message"]
    joined = await guest.ok("join_session", session_id=sid)
    assert players(joined["session"]) == [("alice", False, True), ("bob", False, True)]
    refused = await host.error("start_session", "NOT_READY")
    assert refused["error"]["message"] == "not ready: alice, bob"

    assert set(await guest.ok("set_ready", ready=True)) == {"type", "id", "ok"}
    for p in (host, guest):
        ev = await p.event("player_ready")
        assert (ev["session_id"], ev["player_id"], ev["ready"]) == (sid, guest.player_id, True)
        assert players(ev["session"]) == [("alice", False, True), ("bob", True, True)]
    refused = await host.error("start_session", "NOT_READY")
    assert refused["error"]["message"] == "not ready: alice"
    await guest.error("set_ready", "BAD_REQUEST", ready="yes")
    await host.ok("set_ready", ready=True)
    started = await host.ok("start_session")
    assert started["session"]["session_state"] == "CONNECTING"
    await guest.error("set_ready", "SESSION_NOT_WAITING", ready=False)


async def test_a_failed_start_resets_ready_flags(make_mode_node, connect_player) -> None:
    node = await make_mode_node(allocator=NoServers())
    host = await connect_player(node, "alice")
    guest = await connect_player(node, "bob")
    sid = (await host.ok("create_session", start_rule="all_ready"))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid)
    await guest.ok("set_ready", ready=True)
    await host.ok("set_ready", ready=True)
    await host.error("start_session", "NO_SERVER_AVAILABLE")
    failed = await guest.event("session_start_failed")
    assert players(failed["session"]) == [("alice", False, True), ("bob", False, True)]
    await host.error("start_session", "NOT_READY")
    outsider = await connect_player(node, "carol")
    # Settings changes reset the flags too, and can change the rule.
    await guest.ok("set_ready", ready=True)
    await guest.event("player_ready")
    await host.error("update_session", "BAD_REQUEST", min_players=3, max_players=2)
    updated = await host.ok("update_session", start_rule="host", min_players=2)
    assert (updated["session"]["start_rule"], updated["session"]["min_players"]) == ("host", 2)
    assert players(updated["session"]) == [("alice", False, True), ("bob", False, True)]
    ev = await guest.event("session_updated")
    assert players(ev["session"]) == [("alice", False, True), ("bob", False, True)]
    await outsider.error("set_ready", "NOT_IN_SESSION", ready=True)


# presence --------------------------------------------------------------------


async def test_dropped_member_is_shown_then_back_then_timed_out(make_mode_node, connect_player
                                                                ) -> None:
    node = await make_mode_node(seat_hold_seconds=30)
    host = await connect_player(node, "alice")
    guest = await connect_player(node, "bob")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid)

    dropped_at = time.time()
    await guest.close()
    ev = await host.event("player_disconnected", timeout=1.0)
    assert (ev["session_id"], ev["player_id"]) == (sid, guest.player_id)
    assert dropped_at + 29 <= ev["hold_until"] <= time.time() + 30
    assert players(ev["session"]) == [("alice", False, True), ("bob", False, False)]
    assert ev["session"]["connected_players"] == [host.player_id, guest.player_id]

    back = await connect_player(node, None)
    reply = await back.ok("hello", resume_token=guest.resume_token)
    assert players(reply["session"]) == [("alice", False, True), ("bob", False, True)]
    assert reply["chat"] == []
    ev = await host.event("player_reconnected", timeout=1.0)
    assert ev["player_id"] == guest.player_id and players(ev["session"])[1][2] is True
    assert ev["session"]["version"] == reply["session"]["version"]
    assert host.no_event()


async def test_hold_expiry_after_disconnect_is_a_timeout(make_mode_node, connect_player) -> None:
    node = await make_mode_node(seat_hold_seconds=0.3)
    host = await connect_player(node, "alice")
    guest = await connect_player(node, "bob")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid)
    await guest.close()
    ev = await host.event("player_disconnected")
    assert ev["type"] == "player_disconnected" and ev["player_id"] == guest.player_id
    ev = await host.event()
    assert ev["type"] == "player_left" and ev["reason"] == "timeout"
    assert [p["player_id"] for p in ev["session"]["players"]] == [host.player_id]


# chat ------------------------------------------------------------------------


async def test_chat_reaches_every_member_and_is_kept(make_mode_node, connect_player) -> None:
    node = await make_mode_node()
    host = await connect_player(node, "alice")
    guest = await connect_player(node, "bob")
    outsider = await connect_player(node, "carol")
    created = await host.ok("create_session")
    assert created["chat"] == []
    sid = created["session"]["session_id"]
    await outsider.error("send_chat", "NOT_IN_SESSION", text="hi")
    await outsider.error("chat_history", "NOT_IN_SESSION")

    await host.ok("send_chat", text="first")
    assert (await host.event("chat_message"))["text"] == "first"
    joined = await guest.ok("join_session", session_id=sid)
    assert [(m["seq"], m["name"], m["text"]) for m in joined["chat"]] == [(1, "alice", "first")]
    assert set(joined["chat"][0]) == {"seq", "player_id", "name", "text", "sent_at"}

    text = "line one\nline two ✓ " + "é" * 480  # 500 code points, more bytes
    assert len(text) == 500
    await guest.ok("send_chat", text=text)
    for p in (host, guest):  # the sender too
        ev = await p.event("chat_message")
        assert ev == {"type": "chat_message", "session_id": sid, "seq": 2,
                      "player_id": guest.player_id, "name": "bob", "text": text,
                      "sent_at": ev["sent_at"]}
        assert abs(ev["sent_at"] - time.time()) < 5
    assert guest.no_event()  # no chat_message of before its join
    history = await guest.ok("chat_history")
    assert [m["seq"] for m in history["messages"]] == [1, 2]
    assert [m["seq"] for m in (await guest.ok("chat_history", after_seq=1))["messages"]] == [2]

    for bad in ("", " \n ", "x" * 501, "bell\x07", "cr\r\n"):
        await guest.error("send_chat", "BAD_REQUEST", text=bad)
    await guest.error("send_chat", "BAD_REQUEST", text=5)
    await guest.error("chat_history", "BAD_REQUEST", after_seq=-1)

    # Kicked: no more chat, either way.
    await host.ok("kick_player", player_id=guest.player_id)
    await guest.event("kicked")
    await host.ok("send_chat", text="after the kick")
    await host.event("chat_message")
    await guest.error("send_chat", "NOT_IN_SESSION", text="let me back")
    await guest.error("chat_history", "NOT_IN_SESSION")
    await guest.ok("ping")
    assert all(ev["type"] != "chat_message" for ev in _drained(guest))


def _drained(player: Any) -> list[dict[str, Any]]:
    out = []
    while not player.events.empty():
        out.append(player.events.get_nowait())
    return out


async def test_chat_rate_holds_across_sockets_and_nodes(make_node, redis_url, connect_player
                                                        ) -> None:
    n1 = await make_node(redis_url=redis_url)
    n2 = await make_node(redis_url=redis_url)
    host = await connect_player(n1, "alice")
    await host.ok("create_session")
    for i in range(CHAT_RATE):
        await host.ok("send_chat", text=f"m{i}")
    refused = await host.error("send_chat", "RATE_LIMITED", text="too many")
    assert "5 chat messages per 5 s" in refused["error"]["message"]
    # The same player on another socket of another node is the same sender.
    again = await connect_player(n2, None)
    await again.ok("hello", resume_token=host.resume_token)
    await again.error("send_chat", "RATE_LIMITED", text="from elsewhere")


async def test_resume_on_another_node_replays_missed_chat(make_node, redis_url, connect_player
                                                          ) -> None:
    n1 = await make_node(redis_url=redis_url)
    n2 = await make_node(redis_url=redis_url)
    host = await connect_player(n1, "alice")
    talker = await connect_player(n1, "carol")
    guest = await connect_player(n2, "bob")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    await talker.ok("join_session", session_id=sid)
    await guest.ok("join_session", session_id=sid)
    await guest.ok("send_chat", text="before")
    assert (await guest.event("chat_message"))["seq"] == 1

    await guest.close()
    await host.event("player_disconnected")
    # Ten messages while bob is away (two senders: each may send 5 per 5 s).
    for i in range(10):
        await (host if i % 2 else talker).ok("send_chat", text=f"missed {i}")
    for _ in range(10):
        await host.event("chat_message")

    back = await connect_player(n2, None)
    reply = await back.ok("hello", resume_token=guest.resume_token)
    assert reply["resumed"] is True
    assert [m["seq"] for m in reply["chat"]] == list(range(1, 12))
    assert [m["text"] for m in reply["chat"][1:]] == [f"missed {i}" for i in range(10)]
    await host.event("player_reconnected")
    await back.ok("send_chat", text="I'm back")
    ev = await back.event("chat_message")
    assert (ev["seq"], ev["text"]) == (12, "I'm back")
    # Nothing the reply already had is pushed again.
    await back.ok("ping")
    assert all(e["type"] != "chat_message" for e in _drained(back))


async def test_join_sees_the_last_fifty(node: LobbyNode, connect_player) -> None:
    senders = [await connect_player(node, f"p{i}") for i in range(CHAT_KEEP // CHAT_RATE + 2)]
    sid = (await senders[0].ok("create_session", max_players=16))["session"]["session_id"]
    for p in senders[1:]:
        await p.ok("join_session", session_id=sid)
    sends = [p.ok("send_chat", text=f"{i}-{j}") for i, p in enumerate(senders)
             for j in range(CHAT_RATE)]
    await asyncio.gather(*sends)
    late = await connect_player(node, "late")
    joined = await late.ok("join_session", session_id=sid)
    total = len(senders) * CHAT_RATE
    assert [m["seq"] for m in joined["chat"]] == list(range(total - CHAT_KEEP + 1, total + 1))
