"""The node's own WebSocket connection (lobby.wsconn) over real sockets: raw TCP
peers that write frames by hand, so that what a browser or websockets' client
would never send (fragments, bad UTF-8, frames pipelined behind the upgrade
request, a flood, a peer that ignores the close) is exercised too."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import struct

import pytest
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode

from lobby import wsconn
from lobby.app import LobbyNode

BOTH_EVENT_LOOPS = True  # conftest: every test on asyncio's loop and on uvloop's


def _frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client frame: masked, as RFC 6455 requires of clients."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n").encode()


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    return b0 & 0x0F, await reader.readexactly(n)


async def _replies(reader: asyncio.StreamReader, count: int) -> list[dict]:
    out = []
    while len(out) < count:
        opcode, data = await _read_frame(reader)
        assert opcode == 0x1, (opcode, data)
        out.append(json.loads(data))
    return out


async def _open(port: int, *frames: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Upgrade request and `frames` in one write: the frames arrive before the
    server has answered the handshake."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request(port) + b"".join(frames))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def _ping(i: int) -> bytes:
    return json.dumps({"type": "ping", "id": i}).encode()


async def test_frames_pipelined_behind_the_upgrade_are_answered_in_order(make_node) -> None:
    node: LobbyNode = await make_node()
    hello = json.dumps({"type": "hello", "id": 0, "name": "eager"}).encode()
    reader, writer = await _open(node.port, _frame(0x1, hello),
                                 *(_frame(0x1, _ping(i)) for i in range(1, 6)))
    try:
        async with asyncio.timeout(5):
            replies = await _replies(reader, 6)
        assert [r["id"] for r in replies] == [0, 1, 2, 3, 4, 5]
        assert replies[0]["type"] == "hello" and replies[0]["ok"] is True
        assert all(r["type"] == "ping" and r["ok"] for r in replies[1:])
    finally:
        writer.close()


async def test_a_fragmented_message_is_one_request(make_node) -> None:
    node: LobbyNode = await make_node()
    text = json.dumps({"type": "hello", "id": 7, "name": "fragments"}).encode()
    parts = [text[:5], text[5:11], text[11:]]
    reader, writer = await _open(node.port)
    try:
        writer.write(_frame(0x1, parts[0], fin=False) + _frame(0x0, parts[1], fin=False)
                     # a ping between fragments is allowed and answered at once
                     + _frame(0x9, b"mid") + _frame(0x0, parts[2]))
        async with asyncio.timeout(5):
            opcode, data = await _read_frame(reader)
            assert (opcode, data) == (0xA, b"mid")
            (reply,) = await _replies(reader, 1)
        assert reply["type"] == "hello" and reply["id"] == 7 and reply["ok"] is True
    finally:
        writer.close()


async def test_invalid_utf8_closes_with_1007_and_the_node_serves_on(make_node,
                                                                     connect_player) -> None:
    node: LobbyNode = await make_node()
    reader, writer = await _open(node.port)
    try:
        writer.write(_frame(0x1, b'{"type": "ping", "id": "\xff\xfe"}'))
        async with asyncio.timeout(5):
            opcode, data = await _read_frame(reader)
        assert opcode == 0x8 and struct.unpack("!H", data[:2])[0] == 1007
    finally:
        writer.close()
    player = await connect_player(node, "after")
    assert (await player.request("ping"))["ok"] is True


async def test_too_many_fragments_close_with_1009(make_node) -> None:
    node: LobbyNode = await make_node()
    reader, writer = await _open(node.port)
    try:
        writer.write(_frame(0x1, b"[", fin=False)
                     + b"".join(_frame(0x0, b" ", fin=False)
                                for _ in range(wsconn.MAX_FRAGMENTS + 1)))
        async with asyncio.timeout(5):
            opcode, data = await _read_frame(reader)
        assert opcode == 0x8 and struct.unpack("!H", data[:2])[0] == 1009
    finally:
        writer.close()


async def _close_code(reader: asyncio.StreamReader, answered: int) -> int:
    """The close frame's code, past any reply (only to request `answered`) before it."""
    opcode, data = await _read_frame(reader)
    while opcode == 0x1:
        assert json.loads(data)["id"] == answered
        opcode, data = await _read_frame(reader)
    assert opcode == 0x8
    return int(struct.unpack("!H", data[:2])[0])


def test_between_frames_follows_websockets_parser() -> None:
    """wsconn._between_frames on websockets' own protocol, fed byte by byte: true
    only where its parser waits for a new frame outside any message."""
    protocol = wsconn.LobbyProtocol(extensions=[], max_size=1 << 16,
                                    state=wsconn.OPEN, logger=logging.getLogger("test"))
    assert wsconn._between_frames(protocol)
    whole = _frame(0x1, b"x" * 300)  # 16-bit length: header 4 bytes, then the mask
    for i in range(1, len(whole)):
        protocol.receive_data(whole[i - 1:i])
        assert not wsconn._between_frames(protocol), i
    protocol.receive_data(whole[-1:])
    assert wsconn._between_frames(protocol)
    protocol.receive_data(_frame(0x1, b"start", fin=False))
    assert not wsconn._between_frames(protocol)  # a message is open
    protocol.receive_data(_frame(0x9, b"ping"))
    assert not wsconn._between_frames(protocol)
    protocol.receive_data(_frame(0x0, b" end"))
    assert wsconn._between_frames(protocol)
    protocol.receive_data(_frame(0x8, b"\x03\xe8"))  # a close: the parser discards from here
    assert not wsconn._between_frames(protocol)


def test_text_frames_are_websockets_frames() -> None:
    for n in (0, 1, 125, 126, 127, 1000, 65535, 65536, 70000):
        payload = bytes(i % 251 for i in range(n))
        assert wsconn.text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


async def test_frames_read_by_the_node_itself_mean_what_they_mean_to_websockets(
        make_node) -> None:
    """Whole text frames are read by the node; anything else (a ping, a fragment,
    a frame cut across reads, a 16-bit length, one over max size, bad UTF-8)
    from that frame on by websockets. Byte streams that mix them, written in
    pieces, are answered in order, as one request per message, and the node did
    read text frames itself."""
    node: LobbyNode = await make_node(rate_limit_per_second=100_000,
                                      rate_limit_burst=100_000, max_message_bytes=2048)
    listener = node.sockets.listener
    hello = json.dumps({"type": "hello", "id": 0, "name": "mixed"}).encode()
    reader, writer = await _open(node.port, _frame(0x1, hello))

    def ping(i: int, pad: int = 0) -> bytes:
        return json.dumps({"type": "ping", "id": i, "x": " " * pad}).encode()

    try:
        async with asyncio.timeout(10):
            await _replies(reader, 1)
            before = listener.frames_read_here
            text = ping(3)
            stream = (_frame(0x1, ping(1)) + _frame(0x1, ping(2, pad=300))  # 16-bit length
                      + _frame(0x9, b"p1")  # websockets answers the ping...
                      + _frame(0x1, text[:4], fin=False) + _frame(0x0, text[4:])
                      + _frame(0x1, ping(4)) + _frame(0x1, ping(5)))  # ...and reads on
            # Cut at every few bytes: headers, masks and payloads split across reads.
            for at in range(0, len(stream), 7):
                writer.write(stream[at:at + 7])
                await writer.drain()
                await asyncio.sleep(0)  # not a wait: the node (same loop) reads each piece
            writer.write(_frame(0x1, ping(6)) + _frame(0x1, ping(7)))
            got: list[tuple[int, bytes] | int] = []
            while len(got) < 8:
                opcode, data = await _read_frame(reader)
                got.append((opcode, data) if opcode != 0x1 else json.loads(data)["id"])
        # (A ping is answered as it is read; requests by the socket's task.)
        assert [g for g in got if isinstance(g, int)] == [1, 2, 3, 4, 5, 6, 7]
        assert (0xA, b"p1") in got
        assert listener.frames_read_here >= before + 2
        # Over max_message_bytes, in one read with a frame before it: 1009 (the
        # failure closes at once: the request before it may go unanswered).
        writer.write(_frame(0x1, ping(8)) + _frame(0x1, ping(9, pad=4000)))
        async with asyncio.timeout(5):
            assert await _close_code(reader, answered=8) == 1009
    finally:
        writer.close()
    # A whole text frame where a fragmented message's continuation is due: 1002,
    # as websockets has it (the node reads no frame of an open message); bad UTF-8
    # behind a good frame in one read: the first is answered, then 1007. Every
    # write but the last ends with a ping, whose pong says the node has read it.
    cases = [
        ([_frame(0x1, b'{"type": "pi', fin=False) + _frame(0x9, b"read?"),
          _frame(0x1, ping(1))], -1, 1002),
        ([_frame(0x1, ping(1)) + _frame(0x1, b'{"type": "ping", "id": "\xff"}')
          + _frame(0x1, ping(2))], 1, 1007),
    ]
    for writes, answered, code in cases:
        reader, writer = await _open(node.port, _frame(0x1, hello))
        try:
            async with asyncio.timeout(5):
                await _replies(reader, 1)
                for data in writes[:-1]:
                    writer.write(data)
                    assert await _read_frame(reader) == (0xA, b"read?")
                writer.write(writes[-1])
                assert await _close_code(reader, answered) == code
        finally:
            writer.close()


async def test_random_streams_cut_anywhere_are_read_as_websockets_reads_them(
        make_node) -> None:
    """Seeded random streams of requests (whole frames, 16-bit lengths, fragmented
    messages with pings between their fragments, pings between messages), written
    in random pieces: every request is answered once, in order, and every ping is
    answered, whichever of the node and websockets read each frame."""
    rng = random.Random(18)
    node: LobbyNode = await make_node(rate_limit_per_second=100_000,
                                      rate_limit_burst=100_000)
    hello = json.dumps({"type": "hello", "id": 0, "name": "random"}).encode()
    for _stream in range(12):
        reader, writer = await _open(node.port, _frame(0x1, hello))
        try:
            async with asyncio.timeout(10):
                await _replies(reader, 1)
                stream = b""
                pings: list[bytes] = []
                for i in range(1, 31):
                    text = json.dumps({"type": "ping", "id": i,
                                       "x": " " * rng.choice((0, 10, 200))}).encode()
                    if rng.random() < 0.3:
                        cut = rng.randrange(1, len(text))
                        ping = f"in-{i}".encode()
                        pings.append(ping)
                        stream += (_frame(0x1, text[:cut], fin=False) + _frame(0x9, ping)
                                   + _frame(0x0, text[cut:]))
                    else:
                        stream += _frame(0x1, text)
                    if rng.random() < 0.2:
                        ping = f"after-{i}".encode()
                        pings.append(ping)
                        stream += _frame(0x9, ping)
                at = 0
                while at < len(stream):
                    size = rng.randint(1, 64)
                    writer.write(stream[at:at + size])
                    at += size
                    await writer.drain()
                    await asyncio.sleep(0)  # not a wait: the node (same loop) reads each piece
                ids: list[int] = []
                pongs: list[bytes] = []
                while len(ids) < 30 or len(pongs) < len(pings):
                    opcode, data = await _read_frame(reader)
                    if opcode == 0x1:
                        ids.append(json.loads(data)["id"])
                    else:
                        assert opcode == 0xA, (opcode, data)
                        pongs.append(data)
            assert ids == list(range(1, 31))
            assert pongs == pings
        finally:
            writer.close()


def _node_tasks() -> list[asyncio.Task]:
    """Tasks running the lobby's code (not the test clients')."""
    return [t for t in asyncio.all_tasks()
            if "/lobby/" in t.get_coro().cr_code.co_filename]  # type: ignore[union-attr]


async def test_idle_sockets_hold_no_task(make_node, connect_player) -> None:
    node: LobbyNode = await make_node()
    before = len(_node_tasks())
    players = [await connect_player(node, f"idle{i}") for i in range(20)]
    assert (await players[-1].request("ping"))["ok"] is True
    assert node.hub.client_count == 20
    assert len(_node_tasks()) <= before, _node_tasks()


async def test_a_flood_pauses_reading_and_every_request_is_still_answered(
        make_node) -> None:
    node: LobbyNode = await make_node(rate_limit_per_second=100_000, rate_limit_burst=100_000)
    hello = json.dumps({"type": "hello", "id": 0, "name": "flood"}).encode()
    reader, writer = await _open(node.port, _frame(0x1, hello))
    try:
        async with asyncio.timeout(10):
            await _replies(reader, 1)
            listener = node.sockets.listener
            before = listener.read_pauses
            total = 2_000
            writer.write(b"".join(_frame(0x1, _ping(i)) for i in range(1, total + 1)))
            got: list[int] = []
            while len(got) < total:
                got += [r["id"] for r in await _replies(reader, 1)]
        # In order, none lost, though reading stopped while requests queued up
        # (and resumed: the last ones were read after a pause).
        assert got == list(range(1, total + 1))
        assert listener.read_pauses > before
    finally:
        writer.close()


async def test_a_peer_that_never_answers_the_close_is_cut_after_the_timeout(
        make_node) -> None:
    node: LobbyNode = await make_node()
    node.sockets.listener.close_timeout = 0.3
    hello = json.dumps({"type": "hello", "id": 0, "name": "deaf"}).encode()
    reader, writer = await _open(node.port, _frame(0x1, hello))
    try:
        async with asyncio.timeout(5):
            await _replies(reader, 1)
            (client,) = node.hub.clients()
            client.close(4000, "bye")
            opcode, data = await _read_frame(reader)
            assert opcode == 0x8 and struct.unpack("!H", data[:2])[0] == 4000
            # No close frame back: the server drops the TCP connection itself.
            assert await reader.read() == b""
            await client.ws.wait_closed()
    finally:
        writer.close()


async def test_shutdown_closes_open_sockets_with_1001_and_waits_for_their_cleanup(
        make_node) -> None:
    node: LobbyNode = await make_node()
    listener = node.sockets.listener
    async with connect(f"ws://127.0.0.1:{node.port}/ws") as ws:
        await ws.send(json.dumps({"type": "hello", "id": 1, "name": "stays"}))
        assert json.loads(await ws.recv())["ok"] is True
        listener.close()  # what node.stop() does first
        await asyncio.wait_for(listener.wait_closed(), 15)
        # wait_closed returned only once the lobby had let the player go
        assert not listener.sockets and node.hub.client_count == 0
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1001


_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
_BASE = [("Host", "127.0.0.1"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
         ("Sec-WebSocket-Key", _KEY), ("Sec-WebSocket-Version", "13")]


def _head(lines: list[tuple[str, str]], start: str = "GET /ws HTTP/1.1") -> bytes:
    return (start + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in lines) + "\r\n").encode()


def _without(name: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in _BASE if k != name]


# Requests a WebSocket client could send, some odd, some wrong: the node must answer
# each as websockets' own server protocol does (and read the common ones itself).
HANDSHAKES = {
    "common": _head(_BASE),
    "browser-like": _head([*_BASE, ("Origin", "http://example.com"),
                           ("Sec-WebSocket-Extensions", "permessage-deflate"),
                           ("User-Agent", "Mozilla/5.0 (X11)"), ("Pragma", "no-cache")]),
    "lowercase names, mixed case values": _head(
        [(k.lower(), v) for k, v in _BASE[:2]] + [("connection", "keep-alive, Upgrade")]
        + _BASE[3:]),
    "query string": _head(_BASE, "GET /ws?game=demo HTTP/1.1"),
    "subprotocol offered": _head([*_BASE, ("Sec-WebSocket-Protocol", "chat")]),
    "no key": _head(_without("Sec-WebSocket-Key")),
    "short key": _head([*_without("Sec-WebSocket-Key"), ("Sec-WebSocket-Key", "c2hvcnQ=")]),
    "two keys": _head([*_BASE, ("Sec-WebSocket-Key", _KEY)]),
    "version 8": _head([*_without("Sec-WebSocket-Version"), ("Sec-WebSocket-Version", "8")]),
    "no Connection": _head(_without("Connection")),
    "two Upgrade protocols": _head([*_without("Upgrade"), ("Upgrade", "websocket, h2c")]),
    "a body": _head([*_BASE, ("Content-Length", "5")]),
    "an empty body": _head([*_BASE, ("Content-Length", "0")]),
    "HTTP/1.0": _head(_BASE, "GET /ws HTTP/1.0"),
    "folded header": _head(_BASE)[:-2] + b"X-Folded: a\r\n b\r\n\r\n",
    "bad header name": _head([*_BASE, ("Bad Name", "x")]),
    "control character in a value": _head([*_BASE, ("X-Odd", "a\x01b")]),
    "wrong path": _head(_BASE, "GET /nope HTTP/1.1"),
}


def _websockets_answer(head: bytes) -> tuple[int, str | None]:
    """What websockets' own server protocol answers (status, Sec-WebSocket-Accept)."""
    from websockets.server import ServerProtocol

    proto = ServerProtocol()
    proto.receive_data(head)
    events = proto.events_received()
    if not events:  # its parser refused the request: it closes without an answer
        return 0, None
    request = events[0]
    if request.path.split("?")[0] != "/ws":
        return 404, None
    response = proto.accept(request)
    return response.status_code, response.headers.get("Sec-WebSocket-Accept")


async def _node_answer(port: int, head: bytes) -> tuple[int, str | None]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        async with asyncio.timeout(5):
            raw = await reader.read(65536)
            if not raw:
                return 0, None
            while b"\r\n\r\n" not in raw:
                raw += await reader.read(65536)
    finally:
        writer.close()
    lines = raw.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), fields.get("Sec-WebSocket-Accept")


@pytest.mark.parametrize("case", list(HANDSHAKES))
async def test_every_handshake_is_answered_as_websockets_answers_it(make_node, case) -> None:
    node: LobbyNode = await make_node()
    head = HANDSHAKES[case]
    expected = _websockets_answer(head)
    assert await _node_answer(node.port, head) == expected, case
    if expected[0] == 101:
        # RFC 6455's own example key and answer
        assert expected[1] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_the_common_requests_are_read_without_websockets_parser() -> None:
    for case in ("common", "browser-like", "lowercase names, mixed case values",
                 "query string", "subprotocol offered", "an empty body"):
        head = HANDSHAKES[case][:-4]
        if case == "an empty body":
            assert wsconn.read_upgrade(head) is None  # any Content-Length: websockets'
            continue
        request = wsconn.read_upgrade(head)
        assert request is not None, case
        assert request.headers["Sec-WebSocket-Key"] == _KEY
    for case in ("HTTP/1.0", "folded header", "bad header name",
                 "control character in a value", "a body"):
        assert wsconn.read_upgrade(HANDSHAKES[case][:-4]) is None, case


async def test_a_ping_sent_with_the_upgrade_is_answered_after_the_101(make_node) -> None:
    node: LobbyNode = await make_node()
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        writer.write(_request(node.port) + _frame(0x9, b"early"))
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            assert await _read_frame(reader) == (0xA, b"early")
    finally:
        writer.close()
