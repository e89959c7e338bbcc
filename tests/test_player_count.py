"""The hub's count of players (sockets that said hello), which the heartbeat and
/metrics read instead of walking every socket: it follows hello, resume takeovers
and disconnects."""

from __future__ import annotations

import asyncio

from lobby.app import LobbyNode


def walked(node: LobbyNode) -> int:
    return sum(1 for c in node.hub.clients() if c.player_id is not None)


async def until_count(node: LobbyNode, want: int) -> None:
    # A socket in no session closing tells nobody: the node's count is all there is.
    async with asyncio.timeout(5):
        while node.hub.player_count != want:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_player_count_follows_hello_takeover_and_disconnect(
        node: LobbyNode, connect_player) -> None:
    anonymous = await connect_player(node, None)
    alice = await connect_player(node, "alice")
    bob = await connect_player(node, "bob")
    sid = (await bob.ok("create_session"))["session"]["session_id"]
    await alice.ok("join_session", session_id=sid)
    assert node.hub.client_count == 3
    assert node.hub.player_count == walked(node) == 2
    assert node.node_info()["players"] == 2

    # bob resumes on a second socket: the first is replaced (4001), still one bob.
    twin = await connect_player(node, None)
    assert (await twin.ok("hello", resume_token=bob.resume_token))["resumed"] is True
    await asyncio.wait_for(bob.ws.wait_closed(), 5)
    assert bob.ws.close_code == 4001
    assert node.hub.player_count == walked(node) == 2

    await alice.close()
    # The node forgets the socket before it tells the session.
    assert (await twin.event("player_disconnected"))["player_id"] == alice.player_id
    assert node.hub.player_count == walked(node) == 1
    await anonymous.close()
    await twin.close()
    await until_count(node, 0)
    assert walked(node) == 0 and node.node_info()["players"] == 0
