"""Drain on SIGTERM: a rolling restart of two Redis-mode node processes under 200 players."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.ops_fixtures import NodeProcess

ROOMS = 50
ROOM_SIZE = 4  # 200 players: two of each room on each node


class Link:
    """One player: a socket at a time, its replies by id, the close code it got."""

    def __init__(self) -> None:
        self.ws: ClientConnection | None = None
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.closed: asyncio.Future[int | None] | None = None
        self.close_codes: list[int | None] = []
        self.close_reasons: list[str] = []
        self.player_id = ""
        self.token = ""
        self._next = 0
        self._reader: asyncio.Task[None] | None = None

    async def open(self, url: str) -> None:
        self.ws = await connect(url, compression=None, open_timeout=20)
        self.closed = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(self.ws, self.closed))

    async def _read(self, ws: ClientConnection, closed: asyncio.Future[int | None]) -> None:
        try:
            async for raw in ws:
                msg = json.loads(raw)
                fut = self.replies.pop(msg.get("id"), None) if "ok" in msg else None
                if fut is not None:
                    fut.set_result(msg)
        except ConnectionClosed:
            pass
        self.close_codes.append(ws.close_code)
        self.close_reasons.append(ws.close_reason or "")
        closed.set_result(ws.close_code)

    async def request(self, rtype: str, **fields: Any) -> dict[str, Any]:
        assert self.ws is not None
        self._next += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[self._next] = fut
        await self.ws.send(json.dumps({"type": rtype, "id": self._next, **fields}))
        reply = await asyncio.wait_for(fut, 20)
        assert reply["ok"] is True, reply
        return reply

    async def hello(self, **fields: Any) -> dict[str, Any]:
        reply = await self.request("hello", **fields)
        self.player_id, self.token = reply["player_id"], reply["resume_token"]
        return reply

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)


async def _move(links: list[Link], url: str) -> list[dict[str, Any]]:
    """Each link waits for its close, then resumes on `url`; the resume replies."""

    async def one(link: Link) -> dict[str, Any]:
        assert link.closed is not None
        await asyncio.wait_for(asyncio.shield(link.closed), 20)
        await link.open(url)
        return await link.hello(resume_token=link.token)

    return await asyncio.gather(*(one(link) for link in links))


def _check_seats(replies: list[dict[str, Any]], links: list[Link], rooms: dict[str, set[str]]
                 ) -> None:
    for link, reply in zip(links, replies, strict=True):
        assert reply["resumed"] is True and reply["player_id"] == link.player_id
        session = reply["session"]
        assert session is not None, f"{link.player_id} lost its seat"
        members = {p["player_id"] for p in session["players"]}
        assert link.player_id in members
        assert members == rooms[session["session_id"]], "a room lost a member"


async def test_rolling_restart_moves_every_player_with_its_seat(redis_url: str) -> None:
    args = ["--redis-url", redis_url, "--drain-seconds", "1", "--seat-hold-seconds", "60",
            # 200 players from 127.0.0.1: not what the per-address caps are for.
            "--max-sockets-per-ip", "1000", "--max-handshakes-per-ip", "1000",
            "--max-handshakes", "1000",
]
    node_a, node_b = await asyncio.gather(NodeProcess(args).start(), NodeProcess(args).start())
    nodes = [node_a, node_b]
    links = [Link() for _ in range(ROOMS * ROOM_SIZE)]
    try:
        on_a = [link for i, link in enumerate(links) if i % 2 == 0]
        on_b = [link for i, link in enumerate(links) if i % 2 == 1]
        await asyncio.gather(*(link.open(node_a.url) for link in on_a),
                             *(link.open(node_b.url) for link in on_b))
        await asyncio.gather(*(link.hello(name=f"p{i}") for i, link in enumerate(links)))
        rooms: dict[str, set[str]] = {}
        for r in range(ROOMS):
            members = links[r * ROOM_SIZE:(r + 1) * ROOM_SIZE]
            sid = (await members[0].request("create_session", max_players=ROOM_SIZE)
                   )["session"]["session_id"]
            await asyncio.gather(*(m.request("join_session", session_id=sid)
                                   for m in members[1:]))
            rooms[sid] = {m.player_id for m in members}

        # 1. Node A drains: its 100 players get 1012 and resume on B in their rooms.
        node_a.signal_stop()
        _check_seats(await _move(on_a, node_b.url), on_a, rooms)
        assert await node_a.terminate() == 0
        assert all(link.close_codes == [1012] for link in on_a)
        assert "reconnect" in on_a[0].close_reasons[0]

        # 2. A comes back; B drains: all 200 players move to the new A.
        node_a2 = await NodeProcess(args).start()
        nodes.append(node_a2)
        node_b.signal_stop()
        _check_seats(await _move(links, node_a2.url), links, rooms)
        assert await node_b.terminate() == 0
        assert all(link.close_codes[-1] == 1012 for link in links)
        assert all(1012 in link.close_codes for link in links)
    finally:
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
        for node in nodes:
            await node.kill()
