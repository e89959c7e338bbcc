"""Driver processes: each runs one shard of a scenario on its own asyncio loop.

The parent stays synchronous and steps every driver through the same phases
over a pipe ("grow", "measure", ...). A driver answers each command with one
message; any exception in a driver comes back as an error carrying its
traceback. Every wait has a deadline, and each driver also arms SIGALRM, so a
wedged run ends by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing as mp
import signal
import time
import traceback
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

from bench.procs import ProcSample, cpu_percent, raise_nofile, sample

Message = tuple[str, Any]


class DriverError(RuntimeError):
    pass


class Channel:
    """A driver's end of its pipe, readable without blocking the driver's loop."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        # Parent messages are small, so a readable pipe holds a whole message.
        try:
            self._inbox.put_nowait(self._conn.recv())
        except EOFError:
            asyncio.get_running_loop().remove_reader(self._conn.fileno())
            self._inbox.put_nowait(("stop", None))

    async def recv(self) -> Message:
        return await self._inbox.get()

    def send(self, tag: str, data: Any = None) -> None:
        # Replies can be large (every latency sample); the parent is always
        # waiting for them when they are sent, so this blocks only briefly.
        self._conn.send((tag, data))


# A scenario's driver side: (channel, params, shard index, shard count).
DriverMain = Callable[[Channel, dict[str, Any], int, int], Awaitable[None]]


def _entry(conn: Connection, main: DriverMain, params: dict[str, Any], shard: int,
           shards: int, hard_deadline_s: float) -> None:
    # The parent's ^C is handled by the parent, which then stops us in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.alarm(max(1, int(hard_deadline_s)))
    raise_nofile()

    async def run() -> None:
        channel = Channel(conn)
        await main(channel, params, shard, shards)

    try:
        asyncio.run(run())
    except BaseException as exc:
        with contextlib.suppress(Exception):
            conn.send(("error", f"driver {shard}: {exc!r}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def quiet_gc() -> None:
    """Move the set-up objects out of the collector's sight.

    A full collection over tens of thousands of client objects is a pause of
    tens of ms in the driver, which would show up as server latency.
    """
    gc.collect()
    gc.freeze()


class DriverPool:
    def __init__(self, main: DriverMain, params: dict[str, Any], count: int,
                 hard_deadline_s: float) -> None:
        # fork: the drivers start in milliseconds and inherit the imports. The
        # parent runs no event loop and no threads, so forking it is safe.
        ctx = mp.get_context("fork")
        self.count = count
        self._conns: list[Connection] = []
        self._procs: list[mp.process.BaseProcess] = []
        for shard in range(count):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=_entry, name=f"bench-driver-{shard}",
                args=(child_end, main, params, shard, count, hard_deadline_s), daemon=True,
            )
            proc.start()
            child_end.close()
            self._conns.append(parent_end)
            self._procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def samples(self) -> list[ProcSample | None]:
        return [sample(pid) for pid in self.pids]

    def command(self, tag: str, data: Any = None, wait_s: float = 60.0) -> list[Any]:
        """Send a command to every driver; return each one's answer (same tag)."""
        self.broadcast(tag, data)
        return self.gather(tag, wait_s)

    def broadcast(self, tag: str, data: Any = None) -> None:
        for conn in self._conns:
            conn.send((tag, data))

    def gather(self, tag: str, wait_s: float) -> list[Any]:
        deadline = time.monotonic() + wait_s
        out: list[Any] = [None] * self.count
        for i, conn in enumerate(self._conns):
            left = deadline - time.monotonic()
            if left <= 0 or not conn.poll(left):
                raise DriverError(f"driver {i} did not answer {tag!r} within {wait_s:.0f}s")
            try:
                got_tag, data = conn.recv()
            except EOFError:
                raise DriverError(f"driver {i} exited during {tag!r}") from None
            if got_tag == "error":
                raise DriverError(str(data))
            if got_tag != tag:
                raise DriverError(f"driver {i} answered {got_tag!r} to {tag!r}")
            out[i] = data
        return out

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.send(("stop", None))
        deadline = time.monotonic() + 10
        for proc in self._procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for conn in self._conns:
            conn.close()


def drivers_cpu(before: list[ProcSample | None], after: list[ProcSample | None]
                ) -> list[float | None]:
    return [cpu_percent(a, b) for a, b in zip(before, after, strict=True)]


async def serve_commands(channel: Channel,
                         handlers: dict[str, Callable[[Any], Awaitable[Any]]]) -> None:
    """A driver's main loop: run each command's handler, answer with its result."""
    while True:
        tag, data = await channel.recv()
        if tag == "stop":
            return
        handler = handlers.get(tag)
        if handler is None:
            channel.send("error", f"unknown command {tag!r}")
            continue
        channel.send(tag, await handler(data))
