"""No client can crash the server or disturb another client with bad input."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from lobby.app import LobbyNode
from tests.conftest import http_request, ws_url

BOTH_EVENT_LOOPS = True  # conftest: every test on asyncio's loop and on uvloop's

BAD_FRAMES = [
    ("not json at all", "error"),
    ("{truncated", "error"),
    ("[1, 2, 3]", "error"),
    ('"just a string"', "error"),
    ("42", "error"),
    ("null", "error"),
    ('{"id": 1}', "error"),
    ('{"type": "teleport", "id": 2}', "teleport"),
    ('{"type": 5, "id": 3}', "error"),
    ('{"type": "join_session", "id": 4}', "join_session"),
    ('{"type": "join_session", "id": 5, "session_id": 12}', "join_session"),
    ('{"type": "create_session", "id": 6, "max_players": "8"}', "create_session"),
    ('{"type": "create_session", "id": 7, "max_players": 1}', "create_session"),
    ('{"type": "create_session", "id": 8, "max_players": true}', "create_session"),
    ('{"type": "create_session", "id": 9, "name": ["x"]}', "create_session"),
    ('{"type": "create_session", "id": 10, "name": "' + "x" * 65 + '"}', "create_session"),
    ('{"type": "create_session", "id": 11, "name": "bad\\u0000name"}', "create_session"),
    ('{"type": "create_session", "id": 12, "password": "' + "p" * 500 + '"}', "create_session"),
    ('{"type": "list_sessions", "id": 13, "limit": 1000000}', "list_sessions"),
    ('{"type": "list_sessions", "id": 14, "cursor": 5}', "list_sessions"),
    ('{"type": "kick_player", "id": 15, "player_id": null}', "kick_player"),
    ('{"type": "ping", "id": {"nested": true}}', "ping"),
    ('{"type": "ping", "id": 1.5}', "ping"),
]


@pytest.mark.parametrize(("frame", "reply_type"), BAD_FRAMES)
async def test_bad_frame_gets_bad_request_and_socket_stays(
    node: LobbyNode, connect_player, frame: str, reply_type: str
) -> None:
    bystander = await connect_player(node, "bystander")
    sid = (await bystander.ok("create_session"))["session"]["session_id"]
    sender = await connect_player(node, "sender")
    await sender.ws.send(frame)
    # Frames sent raw have no registered id, so their replies land in orphans.
    reply = await asyncio.wait_for(sender.orphans.get(), 5)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "BAD_REQUEST"
    assert reply["type"] == reply_type
    assert reply["error"]["message"]
    # The socket is still usable, the server and the other client too.
    await sender.ok("ping")
    await sender.ok("join_session", session_id=sid)
    assert (await bystander.event("player_joined"))["player_id"] == sender.player_id


async def test_unparseable_frame_reply_shape(node: LobbyNode, connect_player) -> None:
    p = await connect_player(node, "p")
    await p.ws.send("}{")
    reply = await asyncio.wait_for(p.orphans.get(), 5)
    assert reply == {"type": "error", "id": None, "ok": False,
                     "error": {"code": "BAD_REQUEST", "message": reply["error"]["message"]}}


async def test_reply_keeps_id_of_invalid_request(node: LobbyNode, connect_player) -> None:
    p = await connect_player(node, "p")
    await p.ws.send(json.dumps({"type": "join_session", "id": "abc"}))
    reply = await asyncio.wait_for(p.orphans.get(), 5)
    assert reply["id"] == "abc" and reply["type"] == "join_session"
    assert "session_id" in reply["error"]["message"]


async def test_binary_frame_is_refused(node: LobbyNode, connect_player) -> None:
    p = await connect_player(node, "p")
    await p.ws.send(b'{"type": "ping", "id": 1}')
    reply = await asyncio.wait_for(p.orphans.get(), 5)
    assert reply["ok"] is False and reply["error"]["code"] == "BAD_REQUEST"
    assert "binary" in reply["error"]["message"]
    await p.ok("ping")


async def test_oversize_frame_closes_with_1009(make_node, connect_player) -> None:
    node = await make_node(max_message_bytes=4096)
    victim = await connect_player(node, "victim")
    async with connect(ws_url(node), max_size=None) as ws:
        await ws.send(json.dumps({"type": "ping", "pad": "x" * 5000}))
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    await victim.ok("ping")
    fresh = await connect_player(node, "fresh")
    await fresh.ok("ping")


async def test_http_endpoints(node: LobbyNode) -> None:
    assert await http_request(node.port, "GET", "/healthz") == (200, b"ok\n")
    status, _ = await http_request(node.port, "GET", "/nope")
    assert status == 404
    status, body = await http_request(node.port, "GET", "/metrics.json")
    metrics = json.loads(body)
    assert status == 200 and metrics["mode"] == node.mode and metrics["clients"] == 0


async def test_full_node_refuses_with_503(make_node, connect_player) -> None:
    from websockets.exceptions import InvalidStatus

    node = await make_node(max_clients=2)
    await connect_player(node, "a")
    await connect_player(node, "b")
    with pytest.raises(InvalidStatus) as info:
        await connect(ws_url(node))
    assert info.value.response.status_code == 503


async def test_peer_that_stops_reading_is_dropped(make_node, connect_player) -> None:
    """A socket that never reads cannot make the node buffer its session's pushes forever."""
    import socket as socketlib

    node = await make_node(max_buffered_bytes=8 * 1024, rate_limit_burst=100_000,
                           rate_limit_per_second=100_000.0, max_players_cap=16)
    host = await connect_player(node, "h" * 64)
    sid = (await host.ok("create_session", max_players=16))["session"]["session_id"]
    for i in range(12):  # long names make every snapshot pushed below ~2 KiB
        await (await connect_player(node, f"{i:02d}" + "n" * 62)).ok(
            "join_session", session_id=sid)

    # A real client with a tiny receive window that stops reading after joining:
    # websockets pauses the transport once max_queue frames wait unread.
    raw = socketlib.socket()
    raw.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_RCVBUF, 1024)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", node.port))
    stuck = await connect(ws_url(node), sock=raw, max_queue=1, compression=None)
    await stuck.send(json.dumps({"type": "hello", "id": 1, "name": "stuck"}))
    await stuck.recv()
    await stuck.send(json.dumps({"type": "join_session", "id": 2, "session_id": sid}))
    await stuck.recv()

    hopper = await connect_player(node, "p" * 64)
    # The kernel's send buffer (a few MiB) fills first; bounded either way.
    for _ in range(3000):
        if node.metrics()["slow_drops"]:
            break
        await hopper.ok("join_session", session_id=sid)
        await hopper.ok("leave_session")
    assert node.metrics()["slow_drops"] == 1
    # Everyone else carries on; the stuck player's seat is held for a resume.
    await hopper.ok("join_session", session_id=sid)
    ev = await host.event("player_joined")
    while ev["player_id"] != hopper.player_id or ev["session"]["player_count"] != 15:
        ev = await host.event("player_joined")
    await host.ok("ping")
    stuck.transport.abort()
