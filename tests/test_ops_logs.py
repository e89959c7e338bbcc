"""Start-up errors and logs of `lobby serve`, run as real subprocesses."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from websockets.asyncio.client import connect

from tests.conftest import free_port
from tests.ops_fixtures import NodeProcess, run_lobby

# (case, extra args, environment, exit code, what the one line must name)
MISCONFIGURATIONS: list[tuple[str, list[str], dict[str, str], int, str]] = [
    ("log level", ["--log-level", "verbose"], {}, 2, "--log-level"),
    ("port variable", [], {"LOBBY_PORT": "abc"}, 2, "LOBBY_PORT"),
    ("port flag", ["--port", "99999"], {}, 2, "--port"),
    ("game server", ["--game-server", "nonsense"], {}, 2, "--game-server"),
    ("redis scheme", ["--redis-url", "localhost:6379"], {}, 2, "--redis-url"),
    ("redis variable", [], {"LOBBY_REDIS_URL": "localhost:6379"}, 2, "LOBBY_REDIS_URL"),
    ("log format", [], {"LOBBY_LOG_FORMAT": "xml"}, 2, "LOBBY_LOG_FORMAT"),
]


async def test_each_misconfiguration_is_one_line_and_exit_2() -> None:
    results = await asyncio.gather(*(
        run_lobby(["serve", *args], env) for _, args, env, _, _ in MISCONFIGURATIONS))
    for (case, _, _, code, name), (got, lines) in zip(MISCONFIGURATIONS, results, strict=True):
        assert got == code, (case, got, lines)
        assert len(lines) == 1, (case, lines)
        assert name in lines[0] and "error" in lines[0], (case, lines)
        assert "Traceback" not in lines[0]


async def test_port_in_use_and_unreachable_redis() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        dead_redis = f"redis://127.0.0.1:{free_port()}/0"
        quick = {"LOBBY_STARTUP_TIMEOUT_SECONDS": "0.5"}
        (in_use, in_use_lines), (dead, dead_lines), (debug, debug_lines) = await asyncio.gather(
            run_lobby(["serve", "--port", str(port)]),
            run_lobby(["serve", "--port", "0", "--redis-url", dead_redis], quick),
            run_lobby(["serve", "--port", "0", "--redis-url", dead_redis, "--log-level", "debug"],
                      quick),
        )
    assert in_use == 2, in_use_lines
    assert "--port" in in_use_lines[-1] and "address already in use" in in_use_lines[-1]
    # A dependency that stays down: retried for the start-up timeout, then exit 1.
    assert dead == 1, dead_lines
    assert "--redis-url" in dead_lines[-1] and "unreachable after 0.5s" in dead_lines[-1]
    assert not any("Traceback" in line for line in in_use_lines + dead_lines)
    # --log-level debug shows where it failed, and still ends with the one line.
    assert debug == 1
    assert any("Traceback" in line for line in debug_lines)
    assert debug_lines[-1] == dead_lines[-1]


def _json_lines(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line]


async def _request(ws: Any, rtype: str, rid: int, **fields: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"type": rtype, "id": rid, **fields}))
    while True:
        msg = json.loads(await ws.recv())
        if msg.get("id") == rid:
            return msg


async def test_json_logs_carry_the_fields(redis_url: str) -> None:
    node = await NodeProcess(
        ["--log-format", "json", "--redis-url", redis_url, "--node-id", "n-json"]).start()
    try:
        async with connect(node.url) as ws:
            hello = await _request(ws, "hello", 1, name="ann")
            player = hello["player_id"]
            created = await _request(ws, "create_session", 2)
            sid = created["session"]["session_id"]
            await _request(ws, "start_session", 3)
            await _request(ws, "leave_session", 4)
        await node.wait_for('"disconnect ')
        await node.wait_for(f"session {sid} closed")
    finally:
        assert await node.terminate() == 0
    records = _json_lines(node.lines)  # every line is one JSON object
    for rec in records:
        assert {"time", "level", "logger", "node", "message"} <= rec.keys(), rec
        assert rec["node"] == "n-json"

    def one(prefix: str) -> dict[str, Any]:
        found = [r for r in records if r["message"].startswith(prefix)]
        assert len(found) == 1, (prefix, found)
        return found[0]

    conn = one("connect ")
    assert conn["level"] == "INFO" and conn["remote"] == "127.0.0.1"
    create = one(f"session {sid} created")
    assert create["session"] == sid and create["player"] == player
    assert create["conn"] == conn["conn"]
    claim = one(f"claim for session {sid}")
    assert claim["outcome"] == "claimed" and claim["latency_ms"] >= 0
    assert claim["endpoint"] == "127.0.0.1:6060"
    started = one(f"session {sid} started")
    assert started["session"] == sid
    closed = one(f"session {sid} closed")
    assert closed["reason"] == "abandoned"
    gone = one("disconnect ")
    assert gone["conn"] == conn["conn"] and gone["player"] == player and gone["code"] == 1000
