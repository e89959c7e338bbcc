"""`lobby serve --workers N`: N node processes on one port (SO_REUSEPORT), supervised.

Real processes, real sockets: the supervisor as a subprocess, its workers as its
children, clients over TCP to the one port, Redis the suite's own (or a private one
that the test stops).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import RedisServer
from tests.faults import private_redis  # noqa: F401
from tests.ops_fixtures import NodeProcess, run_lobby


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


async def _node_id(port: int) -> str:
    """The node id of whichever worker the kernel gives this new connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = await reader.read()
    finally:
        writer.close()
    return str(json.loads(raw.split(b"\r\n\r\n", 1)[1])["node_id"])


async def _node_ids(port: int, want: set[str], tries: int = 200) -> set[str]:
    seen: set[str] = set()
    for _ in range(tries):
        with contextlib.suppress(OSError, ValueError):
            seen.add(await _node_id(port))
        if want <= seen:
            break
    return seen


async def _workers(redis_url: str, n: int, *extra: str) -> NodeProcess:
    node = NodeProcess(["--redis-url", redis_url, "--workers", str(n), "--node-id", "wk",
                        "--drain-seconds", "0.5", *extra], env={"LOBBY_WORKERS": str(n)})
    await node.start(ready=f"{n} workers serving port")
    return node


async def _hello(ws: Any, name: str) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "hello", "id": 1, "name": name}))
    return json.loads(await ws.recv())


async def test_two_workers_share_the_port_and_the_sessions(redis_url: str) -> None:
    node = await _workers(redis_url, 2)
    try:
        assert node.proc is not None
        workers = _children(node.proc.pid)
        assert len(workers) == 2
        # Both workers answer on the one port, each a node with its own id.
        assert await _node_ids(node.port, {"wk-w1", "wk-w2"}) == {"wk-w1", "wk-w2"}
        # And they serve the same sessions: a host on some worker sees 12 joiners
        # that the kernel spread over both (all on one worker: odds 1 in 2,048).
        async with connect(node.url) as host:
            await _hello(host, "host")
            await host.send(json.dumps({"type": "create_session", "id": 2, "name": "w",
                                        "max_players": 16}))
            sid = json.loads(await host.recv())["session"]["session_id"]
            joiners = [await connect(node.url) for _ in range(12)]
            try:
                for i, ws in enumerate(joiners):
                    await _hello(ws, f"j{i}")
                    await ws.send(json.dumps({"type": "join_session", "id": 2,
                                              "session_id": sid}))
                    assert json.loads(await ws.recv())["ok"] is True
                joined = set()
                async with asyncio.timeout(10):
                    while len(joined) < 12:
                        ev = json.loads(await host.recv())
                        if ev.get("type") == "player_joined":
                            joined.add(ev["name"])
                assert joined == {f"j{i}" for i in range(12)}
            finally:
                for ws in joiners:
                    await ws.close()
        # Each worker is its own node: its log lines carry its id.
        assert any("[wk-w1]" in line and "listening on" in line for line in node.lines)
        assert any("[wk-w2]" in line and "listening on" in line for line in node.lines)
    finally:
        assert await node.terminate() == 0


async def test_a_dead_worker_is_restarted_and_the_others_keep_their_players(
        redis_url: str) -> None:
    node = await _workers(redis_url, 2)
    try:
        assert node.proc is not None
        # A player on each worker: open sockets until both node ids have one.
        players: dict[str, Any] = {}
        for i in range(16):
            ws = await connect(node.url)
            await _hello(ws, "p")
            players[f"p{i}"] = ws
        victim = _children(node.proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        line = await node.wait_for("exited (signal SIGKILL); restarting it")
        name = line.split("worker ", 1)[1].split(" ", 1)[0]
        # The restarted worker comes back under the same node id (so it drops its
        # predecessor's sockets on its first sweep), and both answer again.
        await node.wait_count(f"node {name} listening on", 2)
        assert await _node_ids(node.port, {"wk-w1", "wk-w2"}) == {"wk-w1", "wk-w2"}
        assert node.proc.returncode is None
        assert len(_children(node.proc.pid)) == 2 and victim not in _children(node.proc.pid)
        # The survivor's players are still connected (a ping is answered); only
        # the killed worker's were cut (16 sockets over 2 workers: both have some).
        alive = cut = 0
        for ws in players.values():
            try:
                await ws.send(json.dumps({"type": "ping", "id": 9}))
                async with asyncio.timeout(5):
                    alive += json.loads(await ws.recv()).get("ok") is True
            except ConnectionClosed:
                cut += 1
        assert alive > 0 and cut > 0 and alive + cut == len(players)
        for ws in players.values():
            await ws.close()
    finally:
        assert await node.terminate() == 0


async def test_sigterm_drains_every_worker_and_frees_the_port(redis_url: str) -> None:
    node = await _workers(redis_url, 2)
    assert node.proc is not None
    workers = _children(node.proc.pid)
    sockets = []
    for _ in range(8):
        ws = await connect(node.url)
        await _hello(ws, "p")
        sockets.append(ws)
    node.signal_stop()
    # Every client is told to reconnect elsewhere (1012), whichever worker it had.
    for ws in sockets:
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await ws.recv()
        assert ws.close_code == 1012
    assert await node.terminate() == 0
    assert sum("shutting down" in line for line in node.lines) == 2
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    with socket.socket() as s:  # nobody listens there any more
        assert s.connect_ex(("127.0.0.1", node.port)) != 0


async def test_a_worker_that_keeps_dying_stops_the_server(
        private_redis: RedisServer) -> None:  # noqa: F811
    node = await _workers(private_redis.url, 2, "--startup-timeout-seconds", "0.2")
    assert node.proc is not None
    private_redis.stop()
    # Its restarts cannot reach Redis: each exits at start-up, 5 times in a row.
    os.kill(_children(node.proc.pid)[0], signal.SIGKILL)
    code = await asyncio.wait_for(node.proc.wait(), 60)
    assert code == 1
    errors = [x for x in node.lines if "lobby serve: error: worker" in x]
    assert errors and "exited 5 times in 60s" in errors[0], node.lines[-10:]
    await node.kill()


async def test_workers_start_up_failure_is_one_line_and_its_exit_code() -> None:
    dead = "redis://127.0.0.1:1/0"
    code, lines = await run_lobby(["serve", "--port", "0", "--redis-url", dead, "--workers", "2",
                                   "--startup-timeout-seconds", "0.3"])
    assert code == 1
    assert "unreachable after 0.3s" in lines[-1] and "--redis-url" in lines[-1]


async def test_embedded_mode_refuses_more_than_one_worker() -> None:
    code, lines = await run_lobby(["serve", "--port", "0", "--workers", "2"])
    assert code == 2
    assert "--workers 2" in lines[-1] and "embedded mode" in lines[-1]
    assert "--redis-url" in lines[-1]
    code, lines = await run_lobby(["serve", "--port", "0", "--reuse-port"])
    assert code == 2 and "--reuse-port" in lines[-1]


async def test_workers_default_to_one_per_core_in_redis_mode(redis_url: str) -> None:
    cores = len(os.sched_getaffinity(0))
    node = NodeProcess(["--redis-url", redis_url, "--node-id", "auto", "--drain-seconds", "0"],
                       env={})
    node.env.pop("LOBBY_WORKERS", None)
    await node.start(ready=f"node auto-w{cores} listening on" if cores > 1
                     else "node auto listening on")
    try:
        if cores > 1:
            await node.wait_for(f"{cores} workers serving port")
            assert node.proc is not None and len(_children(node.proc.pid)) == cores
    finally:
        assert await node.terminate() == 0


async def test_workers_on_a_port_in_use_is_refused_at_once(redis_url: str) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        # SO_REUSEPORT would let the workers share it with anyone who set it too:
        # the supervisor checks first, as a single node's listen would fail.
        code, lines = await run_lobby(["serve", "--port", str(port), "--redis-url", redis_url,
                                       "--workers", "2"])
    assert code == 2
    assert "cannot listen on" in lines[-1] and "--port" in lines[-1]
