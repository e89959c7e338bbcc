"""Shared fixtures: a real redis-server on a free port, lobby nodes, WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect

from lobby.allocators.base import Allocator
from lobby.app import LobbyNode
from lobby.config import Settings
from tests.frames import SENT_FRAMES

# Redis Cluster and Sentinel fixtures (redis_cluster, cluster_url, make_redis_cluster,
# redis_sentinel, sentinel_target, make_redis_sentinel): tests/cluster_fixtures.py.
pytest_plugins = ("tests.cluster_fixtures",)

# `lobby serve` subprocesses run one process (the tests were written for one node per
# port); in Redis mode its default would be one worker per core. tests/test_workers.py
# asks for workers itself.
os.environ.setdefault("LOBBY_WORKERS", "1")


@pytest.fixture(autouse=True)
def server_frames_match_the_schema() -> Iterator[None]:
    """Fails the test when a frame the server sent it has no model or does not match
    its model (tests/frames.py says what to do: add the model, run `lobby schema`)."""
    SENT_FRAMES.errors.clear()
    yield
    errors = list(SENT_FRAMES.errors)
    SENT_FRAMES.errors.clear()
    if errors:
        pytest.fail(f"{len(errors)} frame(s) off the schema; first: " + errors[0], pytrace=False)


def free_port() -> int:
    """A port nothing listens on (the OS picked it and we closed it again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Terminate a helper process the suite started; kill it if it lingers."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class RedisServer:
    """A private redis-server process: never the machine's shared one on 6379."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is missing: ./scripts/test installs it")
        self.exe = exe
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="lobby-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def restart_empty(self) -> None:
        """Kill and start again on the same port with nothing in it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.start()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean database of the suite's Redis for each test (sync, so that async
    fixtures can ask for it with getfixturevalue)."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    """The tests of a module that sets BOTH_EVENT_LOOPS run on asyncio's loop and on
    uvloop's (what `lobby serve` runs: --event-loop); the others on asyncio's."""
    if getattr(getattr(item, "module", None), "BOTH_EVENT_LOOPS", False):
        import uvloop

        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


def test_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "host": "127.0.0.1", "port": 0, "sweep_interval_seconds": 0.05,
        "rate_limit_per_second": 1000.0, "rate_limit_burst": 1000,
        # Every test client comes from 127.0.0.1: the per-address caps are lifted like
        # the rate limit, and tests/test_address_limits.py sets the ones it tests.
        "max_sockets_per_ip": 100_000, "max_handshakes_per_ip": 100_000,
        "max_handshakes": 100_000,
    }
    base.update(overrides)
    return Settings(**base)


NodeFactory = Callable[..., Any]


@pytest.fixture
async def make_node() -> AsyncIterator[NodeFactory]:
    """Start lobby nodes in this process (each with its own sockets and Redis links)."""
    nodes: list[LobbyNode] = []

    async def factory(allocator: Allocator | None = None, **overrides: Any) -> LobbyNode:
        node = LobbyNode(test_settings(**overrides), allocator=allocator)
        await node.start()
        nodes.append(node)
        return node

    yield factory
    for node in reversed(nodes):
        await asyncio.wait_for(node.stop(), 60)


@pytest.fixture(params=["embedded", "redis"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_mode_node(make_node: NodeFactory, mode: str, request: pytest.FixtureRequest
                   ) -> NodeFactory:
    """Start nodes in this test's mode: embedded, or on the suite's (flushed) Redis."""
    url = request.getfixturevalue("redis_url") if mode == "redis" else None

    async def factory(allocator: Allocator | None = None, **overrides: Any) -> LobbyNode:
        if url is not None:
            overrides.setdefault("redis_url", url)
        return await make_node(allocator=allocator, **overrides)

    return factory


@pytest.fixture
async def node(make_mode_node: NodeFactory) -> LobbyNode:
    """One node, in embedded mode and in Redis mode (each test runs in both)."""
    return await make_mode_node()


class Player:
    """A real WebSocket client that speaks the protocol and keeps events apart."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.replies: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.orphans: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._next_id = 0
        self.player_id: str | None = None
        self.resume_token: str | None = None
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                SENT_FRAMES.check(msg, raw)  # every frame the server sends matches the schema
                if "ok" not in msg:
                    self.events.put_nowait(msg)
                elif msg.get("id") in self.replies:
                    self.replies.pop(msg["id"]).set_result(msg)
                else:
                    self.orphans.put_nowait(msg)
        except Exception:
            pass

    async def request(self, rtype: str, **fields: Any) -> dict[str, Any]:
        self._next_id += 1
        rid = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[rid] = fut
        await self.ws.send(json.dumps({"type": rtype, "id": rid, **fields}))
        return await asyncio.wait_for(fut, 10)

    async def ok(self, rtype: str, **fields: Any) -> dict[str, Any]:
        reply = await self.request(rtype, **fields)
        assert reply["ok"] is True, reply
        return reply

    async def error(self, rtype: str, code: str, **fields: Any) -> dict[str, Any]:
        reply = await self.request(rtype, **fields)
        assert reply["ok"] is False, reply
        assert reply["error"]["code"] == code, reply
        return reply

    async def hello(self, name: str | None = None, **fields: Any) -> dict[str, Any]:
        if name is not None:
            fields["name"] = name
        reply = await self.ok("hello", **fields)
        self.player_id = reply["player_id"]
        self.resume_token = reply["resume_token"]
        return reply

    async def event(self, etype: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """The next event (of that type: earlier events of other types are dropped)."""
        async with asyncio.timeout(timeout):
            while True:
                ev = await self.events.get()
                if etype is None or ev["type"] == etype:
                    return ev

    def no_event(self) -> bool:
        return self.events.empty()

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


def ws_url(node: LobbyNode) -> str:
    return f"ws://127.0.0.1:{node.port}/ws"


@pytest.fixture
async def connect_player() -> AsyncIterator[Callable[..., Any]]:
    players: list[Player] = []

    async def factory(node: LobbyNode, name: str | None = "player", **kw: Any) -> Player:
        ws = await connect(ws_url(node), **{"compression": None, **kw})
        player = Player(ws)
        players.append(player)
        if name is not None:
            await player.hello(name)
        return player

    yield factory
    for player in players:
        await asyncio.wait_for(player.close(), 15)


async def http_request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, bytes]:
    """A real HTTP request from a thread (the server runs on this test's loop)."""
    import http.client

    def call() -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    return await asyncio.to_thread(call)
