"""A protocol-speaking load client on a real `websockets` connection.

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

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

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


class BenchClient:
    __slots__ = ("_ids", "_reader", "_waiting", "events", "on_event", "player_id", "ws")

    def __init__(self, ws: ClientConnection, on_event: OnEvent | None = None) -> None:
        self.ws = ws
        self.on_event: OnEvent = on_event or _ignore
        self.player_id = ""
        self.events = 0
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, url: str, name: str, on_event: OnEvent | None = None,
                   open_timeout_s: float = 20.0) -> BenchClient:
        if not url.startswith(f"ws://{LOOPBACK}:"):
            raise ValueError(f"the benchmark only targets {LOOPBACK}: {url}")
        ws = await connect(
            url, compression=None, proxy=None, open_timeout=open_timeout_s,
            # Keepalive would add pings to the measured traffic; the run is short.
            ping_interval=None, close_timeout=1, max_queue=None, user_agent_header=None,
        )
        client = cls(ws, on_event)
        try:
            _, hello = await client.request("hello", name=name)
        except BaseException:
            client.abort()
            raise
        client.player_id = hello["player_id"]
        return client

    async def send(self, rtype: str, **fields: Any) -> tuple[int, asyncio.Future[Reply]]:
        """Write one request now; return its send time and a future for its reply."""
        rid = next(self._ids)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        text = json.dumps({"type": rtype, "id": rid, **fields}, separators=(",", ":"))
        t_ns = time.monotonic_ns()
        # Awaiting the coroutine directly (not as a task) writes to the transport
        # without a trip through the loop unless the write buffer is full.
        await self.ws.send(text)
        return t_ns, fut

    async def request(self, rtype: str, wait_s: float = 30.0, **fields: Any) -> Reply:
        """Send and wait for the reply; raise RequestFailed on `ok: false`."""
        _, fut = await self.send(rtype, **fields)
        async with asyncio.timeout(wait_s):
            t_ns, reply = await fut
        if not reply.get("ok"):
            raise RequestFailed(reply)
        return t_ns, reply

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                t_ns = time.monotonic_ns()
                msg = json.loads(raw)
                if "ok" in msg:
                    fut = self._waiting.pop(msg.get("id"), None)  # type: ignore[arg-type]
                    if fut is not None and not fut.done():
                        fut.set_result((t_ns, msg))
                else:
                    self.events += 1
                    self.on_event(self, msg, t_ns)
        except ConnectionClosed:
            pass
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed"))
            self._waiting.clear()

    @property
    def closed(self) -> bool:
        return self._reader.done()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake: teardown stays cheap."""
        self._reader.cancel()
        with contextlib.suppress(Exception):
            self.ws.transport.abort()
