"""The fault toolkit: real links cut, real processes killed.

- `TcpProxy`: a TCP proxy the test owns, put between a node and Redis (or
  DynamoDB's moto server, or anything else on 127.0.0.1). It runs its own
  event loop in a thread, so it keeps forwarding whatever the test's loop is
  doing, and works for in-process nodes and node subprocesses alike. Its
  methods return once the fault is in place:
    cut()      RST both sides of every open link (new connections still pass)
    refuse()   new connections are accepted and reset at once
    stall()    links stay up but nothing is forwarded (a black hole)
    restore()  forward again (stalled bytes flow on; nothing was lost)
  `down()` is refuse() + cut(): the link is gone until restore().
- `NodeProc` (bench.procs.LobbyProc): a `lobby serve` subprocess; `kill()`
  SIGKILLs it, so it gets no chance to clean up.
- Raw connections, for clients that open a TCP link and then say nothing (or
  only part of a handshake): `half_open(port, source)` connects from a source
  address of 127.0.0.0/8; `closed_by_server(reader, timeout)` says whether the
  server closed or reset the link within `timeout` seconds.
- Fixtures (a test module opts in with
  `from tests.faults import tcp_proxy, node_procs, private_redis  # noqa: F401`,
  and marks each test parameter naming one `# noqa: F811`, as with aws_fixtures):
    tcp_proxy      factory: tcp_proxy(port) -> a started TcpProxy to 127.0.0.1:port
    node_procs     factory: await node_procs(redis_url=..., extra=[...]) -> NodeProc
    private_redis  a redis-server of the test's own, free to kill and restart
                   (never the suite's shared one, which other tests use)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.procs import LobbyProc
from tests.conftest import RedisServer

_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN
_CHUNK = 65536


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
    writer.transport.abort()


class _Link:
    __slots__ = ("client", "tasks", "upstream")

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        for task in self.tasks:
            task.cancel()
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)


class TcpProxy:
    """Listens on a free 127.0.0.1 port and forwards each connection to the target."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.mode = "open"  # "open", "refuse" or "stall"
        self.accepted = 0  # connections accepted (all modes)
        self.forwarded = 0  # connections linked to the target
        self._links: set[_Link] = set()
        self._flowing: asyncio.Event | None = None
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"tcp-proxy-{target_port}")

    # control (from any thread) -------------------------------------------------
    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def url(self, scheme: str = "redis", path: str = "/0") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def cut(self) -> int:
        """RST both ends of every open link; returns how many were cut."""
        return self._call(self._cut())

    def refuse(self) -> None:
        self._call(self._set_mode("refuse"))

    def stall(self) -> None:
        self._call(self._set_mode("stall"))

    def down(self) -> int:
        self.refuse()
        return self.cut()

    def restore(self) -> None:
        self._call(self._set_mode("open"))

    @property
    def open_links(self) -> int:
        return len(self._links)

    def wait_forwarded(self, count: int, timeout: float = 10.0) -> None:
        """Block until `count` connections in all have been linked to the target
        (e.g. a node has reconnected after restore())."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.forwarded >= count, timeout):
                raise TimeoutError(f"{self.forwarded} of {count} connections forwarded")

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # the proxy's own loop ------------------------------------------------------
    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_mode(self, mode: str) -> None:
        assert self._flowing is not None
        self.mode = mode
        if mode == "stall":
            self._flowing.clear()
        else:
            self._flowing.set()

    async def _cut(self) -> int:
        links, self._links = list(self._links), set()
        for link in links:
            link.reset()
        return len(links)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()

    def _bump(self, **counts: int) -> None:
        with self._changed:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)
            self._changed.notify_all()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._bump(accepted=1)
        if self.mode == "refuse":
            _reset(writer)
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._links.discard(link)
            _reset(writer)
            return
        link.upstream = up_writer
        if link not in self._links:  # cut while connecting
            _reset(up_writer)
            return
        self._bump(forwarded=1)
        link.tasks = [asyncio.ensure_future(self._pump(reader, up_writer, link)),
                      asyncio.ensure_future(self._pump(up_reader, writer, link))]

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    link: _Link) -> None:
        assert self._flowing is not None
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(_CHUNK)
                if not data:
                    break
                # A stall that began during the read holds these bytes back too.
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return
        # One side closed cleanly: pass the close on, as the real link would.
        if link in self._links:
            self._links.discard(link)
            for end in (link.client, link.upstream):
                if end is not None:
                    with contextlib.suppress(Exception):
                        end.close()
            for task in link.tasks:
                if task is not asyncio.current_task():
                    task.cancel()


async def half_open(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            return await reader.read(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


class NodeProc(LobbyProc):
    """A `lobby serve` subprocess (bench.procs.LobbyProc) that a test may SIGKILL."""

    def kill(self) -> None:
        """SIGKILL: no socket close, no store clean-up; the OS resets its sockets."""
        self.stop(signal.SIGKILL)


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[..., TcpProxy]]:
    proxies: list[TcpProxy] = []

    def factory(target_port: int, target_host: str = "127.0.0.1") -> TcpProxy:
        proxy = TcpProxy(target_port, target_host).start()
        proxies.append(proxy)
        return proxy

    yield factory
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def node_procs(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start `lobby serve` subprocesses (logs in the test's tmp_path); all are
    stopped at the end. `extra` are more `serve` flags."""
    procs: list[NodeProc] = []
    names = iter(range(1, 1000))

    async def factory(redis_url: str | None = None, extra: list[str] | None = None
                      ) -> NodeProc:
        name = f"node{next(names)}"
        proc = await asyncio.to_thread(NodeProc, name, tmp_path, redis_url=redis_url,
                                       extra=extra)
        procs.append(proc)
        return proc

    yield factory
    for proc in procs:
        proc.stop()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()
