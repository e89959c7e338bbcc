"""Keepalive pings: the node pings every socket each --ping-interval-seconds (one
timer for all of them) and closes, with 1011, a socket that received nothing in a
whole interval after its ping. Real sockets: a websockets client (which answers
pings) and a raw TCP peer that shook hands and then stopped reading and writing."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct

from websockets.asyncio.client import connect

from lobby.app import LobbyNode

BOTH_EVENT_LOOPS = True  # conftest: every test on asyncio's loop and on uvloop's

INTERVAL = 0.3


async def _raw_handshake(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def _frames(reader: asyncio.StreamReader) -> list[tuple[int, bytes]]:
    """Every frame the server sends up to its close frame (unmasked, short frames)."""
    out: list[tuple[int, bytes]] = []
    while not out or out[-1][0] != 0x8:
        b0, b1 = await reader.readexactly(2)
        length = b1 & 0x7F
        if length == 126:
            length = struct.unpack("!H", await reader.readexactly(2))[0]
        out.append((b0 & 0x0F, await reader.readexactly(length)))
    return out


async def test_a_silent_peer_is_pinged_then_closed_and_a_live_one_stays(make_node) -> None:
    node: LobbyNode = await make_node(ping_interval_seconds=INTERVAL)
    url = f"ws://127.0.0.1:{node.port}/ws"
    async with connect(url) as alive:  # websockets answers pings by itself
        reader, writer = await _raw_handshake(node.port)
        try:
            async with asyncio.timeout(INTERVAL * 10):
                frames = await _frames(reader)
        finally:
            writer.close()
        opcodes = [op for op, _ in frames]
        # Pinged (0x9), never answered: a close frame (0x8) with 1011.
        assert 0x9 in opcodes and opcodes[-1] == 0x8, opcodes
        assert struct.unpack("!H", frames[-1][1][:2])[0] == 1011
        assert b"keepalive ping timeout" in frames[-1][1]
        assert node.sockets.keepalive is not None and node.sockets.keepalive.timeouts >= 1
        # The answering client was pinged the whole time and is still served.
        await asyncio.sleep(INTERVAL * 3)
        await alive.send(json.dumps({"type": "hello", "id": 1, "name": "alive"}))
        assert json.loads(await alive.recv())["ok"] is True
        assert node.hub.client_count == 1


async def test_no_pings_when_disabled(make_node) -> None:
    node: LobbyNode = await make_node(ping_interval_seconds=None)
    assert node.sockets.keepalive is None
    reader, writer = await _raw_handshake(node.port)
    try:
        # Nothing at all comes for a silent peer (it would have been pinged by now).
        try:
            async with asyncio.timeout(INTERVAL * 3):
                data = await reader.read(1)
        except TimeoutError:
            data = b""
        assert data == b""
        assert node.hub.client_count == 1
    finally:
        writer.close()
