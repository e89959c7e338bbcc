"""A protocol-speaking load client: websockets' own protocol on a bare asyncio.Protocol.

The handshake, framing and masking are websockets' (its sans-I/O
`ClientProtocol`, the engine under its asyncio client); only the I/O around it
is ours. The asyncio client adds a reader task, a message queue and two loop
hops per received message, which made the drivers cost twice the server they
measure; here a frame is handled inside `data_received`, where it arrives.

Timestamps are time.monotonic_ns() (CLOCK_MONOTONIC): one clock for every
process on the machine, so a send in one driver and a receive in another could
be compared; each scenario still keeps a room's sockets in one driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from bench.procs import LOOPBACK

# (client, event, receive time ns): called on the driver's loop for every push.
OnEvent = Callable[["BenchClient", dict[str, Any], int], None]
Reply = tuple[int, dict[str, Any]]  # (receive time ns, reply)


class RequestFailed(Exception):
    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        err = reply.get("error") or {}
        self.code = str(err.get("code", "?"))
        super().__init__(f"{reply.get('type')}: {self.code}: {err.get('message')}")


def _ignore(client: BenchClient, event: dict[str, Any], t_ns: int) -> None:
    return None


class BenchClient(asyncio.Protocol):
    __slots__ = ("_fragments", "_ids", "_lost", "_open", "_waiting", "events", "on_event",
                 "player_id", "transport", "ws")

    def __init__(self, url: str, on_event: OnEvent | None = None) -> None:
        self.ws = ClientProtocol(parse_uri(url))
        self.on_event: OnEvent = on_event or _ignore
        self.player_id = ""
        self.events = 0
        self.transport: asyncio.Transport | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        loop = asyncio.get_running_loop()
        self._open: asyncio.Future[None] = loop.create_future()
        self._lost: asyncio.Future[None] = loop.create_future()
        self._fragments: list[bytes] = []

    @classmethod
    async def open(cls, url: str, name: str, on_event: OnEvent | None = None,
                   open_timeout_s: float = 20.0) -> BenchClient:
        """Connect, complete the handshake and say hello."""
        prefix = f"ws://{LOOPBACK}:"
        if not url.startswith(prefix):
            raise ValueError(f"the benchmark only targets {LOOPBACK}: {url}")
        port = int(url[len(prefix):].split("/", 1)[0])
        loop = asyncio.get_running_loop()
        client = cls(url, on_event)
        try:
            async with asyncio.timeout(open_timeout_s):
                await loop.create_connection(lambda: client, LOOPBACK, port)
                client.ws.send_request(client.ws.connect())
                client._flush()
                await client._open
                _, hello = await client.request("hello", name=name)
        except BaseException:
            client.abort()
            raise
        client.player_id = hello["player_id"]
        return client

    # asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        t_ns = time.monotonic_ns()
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Frame):
                self._frame(event, t_ns)
            elif isinstance(event, Response) and not self._open.done():
                if ws.handshake_exc is not None:
                    self._open.set_exception(ws.handshake_exc)
                else:
                    self._open.set_result(None)
        # Pongs and close frames that the protocol wants to answer with.
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()
        if not self._lost.done():
            self._lost.set_result(None)
        err = ConnectionError(f"connection closed ({exc or 'EOF'})")
        if not self._open.done():
            self._open.set_exception(err)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(err)
        self._waiting.clear()

    def _frame(self, frame: Frame, t_ns: int) -> None:
        if frame.opcode is Opcode.TEXT or frame.opcode is Opcode.CONT:
            if not frame.fin:
                self._fragments.append(frame.data)
                return
            data = frame.data
            if self._fragments:
                data = b"".join([*self._fragments, data])
                self._fragments.clear()
            # orjson: the drivers decode every event of thousands of sockets, on the
            # same cores as the node; the stdlib's decoder made them the bottleneck.
            msg = orjson.loads(data)
            if "ok" in msg:
                fut = self._waiting.pop(msg.get("id"), None)  # type: ignore[arg-type]
                if fut is not None and not fut.done():
                    fut.set_result((t_ns, msg))
            else:
                self.events += 1
                self.on_event(self, msg, t_ns)

    def _flush(self) -> None:
        if self.transport is None:
            return
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                # An empty chunk is the protocol asking to half-close TCP.
                self.transport.write_eof()

    # requests ----------------------------------------------------------------
    def send(self, rtype: str, **fields: Any) -> tuple[int, asyncio.Future[Reply]]:
        """Write one request now; return its send time and a future for its reply."""
        if self.ws.state is not State.OPEN:
            raise ConnectionError("connection is not open")
        rid = next(self._ids)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        text = json.dumps({"type": rtype, "id": rid, **fields}, separators=(",", ":"))
        t_ns = time.monotonic_ns()
        self.ws.send_text(text.encode())
        self._flush()
        return t_ns, fut

    async def request(self, rtype: str, wait_s: float = 30.0, **fields: Any) -> Reply:
        """Send and wait for the reply; raise RequestFailed on `ok: false`."""
        _, fut = self.send(rtype, **fields)
        async with asyncio.timeout(wait_s):
            t_ns, reply = await fut
        if not reply.get("ok"):
            raise RequestFailed(reply)
        return t_ns, reply

    @property
    def closed(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    async def close(self, wait_s: float = 10.0) -> None:
        """The closing handshake (code 1000), until the server has closed TCP."""
        if self.ws.state is State.OPEN:
            self.ws.send_close(1000)
            self._flush()
        async with asyncio.timeout(wait_s):
            await self._lost

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake: teardown stays cheap."""
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.abort()
