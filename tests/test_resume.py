"""Seat hold and resume: dropped players keep their seat for a grace period."""

from __future__ import annotations

import asyncio

from lobby.app import LobbyNode


async def test_resume_within_hold_restores_seat(make_mode_node, connect_player) -> None:
    node = await make_mode_node(seat_hold_seconds=30)
    host = await connect_player(node, "host")
    guest = await connect_player(node, "guest")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid)
    await guest.close()

    back = await connect_player(node, None)
    reply = await back.ok("hello", resume_token=guest.resume_token)
    assert reply["resumed"] is True
    assert reply["player_id"] == guest.player_id and reply["name"] == "guest"
    assert reply["session"]["session_id"] == sid
    assert guest.player_id in reply["session"]["connected_players"]
    # The resumed socket gets the session's pushes again.
    await host.ok("start_session")
    ev = await back.event("session_started")
    assert ev["server_endpoint"] == "127.0.0.1:6060"


async def test_seat_hold_timeout_removes_player(make_mode_node, connect_player) -> None:
    node = await make_mode_node(seat_hold_seconds=0.3)
    host = await connect_player(node, "host")
    guest = await connect_player(node, "guest")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid)
    await host.close()  # the host drops: after the hold, guest becomes host

    left = await guest.event("player_left", timeout=5)
    assert left["player_id"] == host.player_id and left["reason"] == "timeout"
    changed = await guest.event("host_changed")
    assert changed["host_id"] == guest.player_id

    # The seat is gone: resuming now gives a fresh identity outside the session.
    back = await connect_player(node, None)
    reply = await back.ok("hello", resume_token=host.resume_token)
    assert reply["resumed"] is False and reply["session"] is None
    assert reply["player_id"] != host.player_id


async def test_started_session_holds_seat_for_its_life(make_mode_node, connect_player
                                                       ) -> None:
    node = await make_mode_node(seat_hold_seconds=0.1)
    host = await connect_player(node, "host")
    guest = await connect_player(node, "guest")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid)
    await host.ok("start_session")
    await host.event("session_started")
    await guest.event("session_started")
    await guest.close()
    # Held for the session's life: no deadline to show.
    dropped = await host.event()
    assert dropped["type"] == "player_disconnected" and dropped["hold_until"] is None
    # Well past the WAITING grace period; sweeps run every 50 ms in tests.
    for _ in range(10):
        await node.lobby.sweep()
        await asyncio.sleep(0.05)
    back = await connect_player(node, None)
    reply = await back.ok("hello", resume_token=guest.resume_token)
    assert reply["resumed"] is True
    assert reply["session"]["server_endpoint"] == "127.0.0.1:6060"
    assert reply["session"]["session_state"] == "CONNECTING"
    assert (await host.event())["type"] == "player_reconnected"
    assert host.no_event()


async def test_resume_on_same_node_closes_old_socket(node: LobbyNode, connect_player) -> None:
    player = await connect_player(node, "p")
    await player.ok("create_session")
    twin = await connect_player(node, None)
    reply = await twin.ok("hello", resume_token=player.resume_token)
    assert reply["resumed"] is True and reply["session"] is not None
    await asyncio.wait_for(player.ws.wait_closed(), 5)
    assert player.ws.close_code == 4001
    # The old socket's close must not start a seat hold against the new one.
    await twin.ok("ping")
    assert (await twin.ok("list_sessions"))["sessions"][0]["player_count"] == 1


async def test_bad_resume_token_gives_new_identity(node: LobbyNode, connect_player) -> None:
    p = await connect_player(node, None)
    reply = await p.ok("hello", name="x", resume_token="p_nobody.forged")
    assert reply["resumed"] is False and reply["name"] == "x"
    q = await connect_player(node, "q")
    forged = q.resume_token.rsplit(".", 1)[0] + ".wrongsecret"
    r = await connect_player(node, None)
    reply = await r.ok("hello", resume_token=forged)
    assert reply["resumed"] is False and reply["player_id"] != q.player_id
