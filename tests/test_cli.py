"""The installed `lobby` command, run as a real subprocess configured by LOBBY_* variables."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from websockets.asyncio.client import connect

from tests.conftest import free_port


async def _start(args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lobby.cli", *args, env=env, stderr=asyncio.subprocess.PIPE)


async def _wait_for_line(proc: asyncio.subprocess.Process, needle: str, seconds: float = 15
                         ) -> str:
    assert proc.stderr is not None
    seen = []
    async with asyncio.timeout(seconds):
        while True:
            line = (await proc.stderr.readline()).decode()
            if not line:
                raise AssertionError("lobby exited early:\n" + "".join(seen))
            seen.append(line)
            if needle in line:
                return "".join(seen)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    # SIGTERM is a clean shutdown, not a crash.
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_serve_from_environment_embedded(redis_url) -> None:
    port = free_port()
    env = {**os.environ, "LOBBY_PORT": str(port), "LOBBY_GAME_SERVER": "192.0.2.7:7777",
           "LOBBY_MAX_PLAYERS_CAP": "4"}
    env.pop("LOBBY_REDIS_URL", None)
    proc = await _start(["serve"], env)
    try:
        log = await _wait_for_line(proc, "listening on")
        assert "EMBEDDED MODE" in log
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send(json.dumps({"type": "hello", "id": 1, "name": "cli"}))
            assert json.loads(await ws.recv())["ok"] is True
            await ws.send(json.dumps({"type": "create_session", "id": 2, "max_players": 5}))
            reply = json.loads(await ws.recv())
            assert reply["error"]["code"] == "BAD_REQUEST"  # cap 4 from the environment
            await ws.send(json.dumps({"type": "create_session", "id": 3}))
            await ws.recv()
            await ws.send(json.dumps({"type": "start_session", "id": 4}))
            msgs = [json.loads(await ws.recv()) for _ in range(2)]
            reply = next(m for m in msgs if m.get("ok"))
            assert reply["session"]["server_endpoint"] == "192.0.2.7:7777"
    finally:
        await _stop(proc)


async def test_serve_flag_beats_environment_redis(redis_url) -> None:
    port = free_port()
    env = {**os.environ, "LOBBY_PORT": "1", "LOBBY_REDIS_URL": redis_url}
    proc = await _start(["serve", "--port", str(port)], env)
    try:
        log = await _wait_for_line(proc, "listening on")
        assert "redis mode" in log and "EMBEDDED" not in log
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send(json.dumps({"type": "ping", "id": 1}))
            assert json.loads(await ws.recv())["error"]["code"] == "NOT_AUTHENTICATED"
    finally:
        await _stop(proc)
