"""Resumes racing the socket they replace: a player has exactly one live socket.

Issue 10 items 1 and 2: a resume on the node that still holds the old socket
(a phone switching networks before the server noticed), and two resumes of one
token on two nodes at the same moment.
"""

from __future__ import annotations

import asyncio

from websockets.protocol import State

from lobby.hub import CLOSE_REPLACED

BOTH_EVENT_LOOPS = True  # conftest: every test on asyncio's loop and on uvloop's


async def test_same_node_resume_with_old_socket_open_gets_every_later_event(
    make_mode_node, connect_player
) -> None:
    node = await make_mode_node(seat_hold_seconds=30)
    host = await connect_player(node, "host")
    guest = await connect_player(node, "guest")
    sid = (await host.ok("create_session", max_players=4))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid)
    await host.event("player_joined")

    # The old socket is still open: the server has not noticed it dying.
    twin = await connect_player(node, None)
    reply = await twin.ok("hello", resume_token=guest.resume_token)
    assert reply["resumed"] is True and reply["session"]["session_id"] == sid
    await asyncio.wait_for(guest.ws.wait_closed(), 5)
    assert guest.ws.close_code == CLOSE_REPLACED

    third = await connect_player(node, "third")
    await third.ok("join_session", session_id=sid)
    joined = await twin.event("player_joined")
    assert joined["player_id"] == third.player_id
    assert guest.player_id in joined["session"]["connected_players"]
    await host.ok("start_session")
    started = await twin.event("session_started")
    assert started["server_endpoint"] == "127.0.0.1:6060"
    # And it still acts as the player: its ticket-free requests work.
    assert (await twin.ok("ping")) is not None


async def test_resume_twice_on_the_same_node_while_open(make_mode_node, connect_player
                                                        ) -> None:
    """Old socket open, two new ones in quick succession: the last one wins and
    hears the room; the middle one is closed with 4001 too."""
    node = await make_mode_node(seat_hold_seconds=30)
    host = await connect_player(node, "host")
    guest = await connect_player(node, "guest")
    sid = (await host.ok("create_session", max_players=4))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid)
    first = await connect_player(node, None)
    await first.ok("hello", resume_token=guest.resume_token)
    last = await connect_player(node, None)
    await last.ok("hello", resume_token=guest.resume_token)
    for old in (guest, first):
        await asyncio.wait_for(old.ws.wait_closed(), 5)
        assert old.ws.close_code == CLOSE_REPLACED
    await host.ok("kick_player", player_id=guest.player_id)
    kicked = await last.event("kicked")
    assert kicked["session_id"] == sid


async def _hello_or_closed(player, token: str) -> dict | None:
    """The hello reply, or None if the socket was closed before it came."""
    reply = asyncio.ensure_future(player.request("hello", resume_token=token))
    closed = asyncio.ensure_future(player.ws.wait_closed())
    await asyncio.wait([reply, closed], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if reply.done():
        closed.cancel()
        return reply.result()
    reply.cancel()
    assert closed.done(), "no reply and still open"
    return None


async def test_two_nodes_resume_one_token_at_once_leaves_exactly_one_socket(
    make_node, redis_url, connect_player
) -> None:
    n1 = await make_node(redis_url=redis_url, seat_hold_seconds=30)
    n2 = await make_node(redis_url=redis_url, seat_hold_seconds=30)
    host = await connect_player(n1, "host")
    sid = (await host.ok("create_session", max_players=16))["session"]["session_id"]
    guest = await connect_player(n2, "guest")
    await guest.ok("join_session", session_id=sid)
    await host.event("player_joined")
    token = guest.resume_token
    current = guest
    for _ in range(50):
        a = await connect_player(n1, None)
        b = await connect_player(n2, None)
        replies = await asyncio.gather(*(_hello_or_closed(p, token) for p in (a, b)))
        # The socket before them is replaced by whichever came first.
        await asyncio.wait_for(current.ws.wait_closed(), 5)
        assert current.ws.close_code == CLOSE_REPLACED
        # Exactly one of the two is closed with 4001, within a bounded time (the
        # loser may be closed before its reply is sent).
        done, _ = await asyncio.wait(
            [asyncio.ensure_future(p.ws.wait_closed()) for p in (a, b)],
            timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert done, "neither racing socket was replaced"
        loser, winner = (a, b) if a.ws.state is not State.OPEN else (b, a)
        await asyncio.wait_for(loser.ws.wait_closed(), 5)
        assert loser.ws.close_code == CLOSE_REPLACED
        won = replies[0] if winner is a else replies[1]
        assert won is not None and won["ok"] and won["resumed"], replies
        # A change published after both resumes reaches the winner after any
        # `replaced` message addressed to it (one pub/sub link per node, in
        # order): if it still hears it, it was not replaced.
        await host.ok("kick_player", player_id=guest.player_id)
        kicked = await winner.event("kicked")
        assert kicked["session_id"] == sid
        assert winner.ws.state is State.OPEN
        assert (await winner.ok("join_session", session_id=sid))["session"]["session_id"] == sid
        await host.event("player_joined")
        await loser.close()
        current = winner
    listing = (await host.ok("list_sessions"))["sessions"]
    mine = next(s for s in listing if s["session_id"] == sid)
    assert mine["player_count"] == 2
