"""A game server's whole FleetIQ life through the lobby (issue 11), and claims whose
answer was lost (issue 10 item 6).

Real processes only: `lobby fleetiq-local` as a subprocess reached by the real boto3
client, lobby nodes on this loop, WebSocket players, and game servers played by
plain HTTP clients (http.client) that use nothing but the lobby's HTTP API.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from lobby.allocators.fleetiq import FleetIQAllocator, session_of
from lobby.aws import make_client
from tests.fleetiq_fixtures import (
    FleetIQProcess,
    _fleetiq_long_ttl,
    fleetiq_local,
    instance_id,
    register_servers,
    run_fleetiq_local,
)

__all__ = ["_fleetiq_long_ttl", "fleetiq_local"]  # fixtures, used by name

KEY = "lifecycle-key"
_groups = itertools.count()


def new_group() -> str:
    return f"life-{os.getpid()}-{next(_groups)}"


@pytest.fixture(scope="module")
def short_fleetiq() -> Iterator[FleetIQProcess]:
    """FleetIQ with 2 s claims and 2 s health reports."""
    with run_fleetiq_local(claim_ttl_seconds=2.0, health_ttl_seconds=2.0) as server:
        yield server


def _call(port: int, method: str, path: str, body: Any = None,
          key: str | None = KEY) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


async def api(port: int, method: str, path: str, body: Any = None,
              key: str | None = KEY) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(_call, port, method, path, body, key)


class GameServer:
    """A dedicated game server as the lobby sees it: HTTP calls with the server key."""

    def __init__(self, node: Any, n: int) -> None:
        self.port = node.port
        self.server_id = f"gs-{n:04d}"
        self.n = n

    async def register(self) -> dict[str, Any]:
        status, body = await api(self.port, "POST", "/v1/servers/register", {
            "server_id": self.server_id, "instance_id": instance_id(self.n),
            "connection_info": f"10.1.0.{self.n}:7777", "data": '{"map":"arena"}'})
        assert status == 200, body
        return body

    async def heartbeat(self) -> tuple[int, dict[str, Any]]:
        return await api(self.port, "POST", f"/v1/servers/{self.server_id}/heartbeat", {})


def describe(gamelift: Any, group: str, server_id: str) -> dict[str, Any] | None:
    try:
        server: dict[str, Any] = gamelift.describe_game_server(
            GameServerGroupName=group, GameServerId=server_id)["GameServer"]
        return server
    except gamelift.exceptions.NotFoundException:
        return None


async def until(what: str, check: Any, timeout: float = 15.0) -> Any:
    """Polls FleetIQ's state (which has no events to wait on) until `check()` holds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.1)


async def start_room(connect_player: Any, node: Any, name: str) -> tuple[Any, str]:
    host = await connect_player(node, name)
    sid = (await host.ok("create_session"))["session"]["session_id"]
    return host, sid


async def test_a_long_match_keeps_its_server_past_the_claim_ttl(
        make_node, redis_url, short_fleetiq: FleetIQProcess, connect_player) -> None:
    group = new_group()
    gamelift = make_client("gamelift", endpoint_url=short_fleetiq.url)
    node = await make_node(redis_url=redis_url, fleetiq_group=group,
                           aws_endpoint_url=short_fleetiq.url, server_key=KEY)
    server = GameServer(node, 1)
    await server.register()
    status, beat = await server.heartbeat()
    assert status == 200 and beat["session"] is None
    shown = describe(gamelift, group, server.server_id)
    assert shown is not None and shown["UtilizationStatus"] == "AVAILABLE"
    assert shown["ConnectionInfo"] == "10.1.0.1:7777" and "LastHealthCheckTime" in shown

    host, sid = await start_room(connect_player, node, "host")
    started = (await host.ok("start_session"))["session"]
    assert started["server_id"] == server.server_id
    claimed = describe(gamelift, group, server.server_id)
    assert claimed is not None and claimed["UtilizationStatus"] == "UTILIZED"
    assert session_of(claimed["GameServerData"]) == sid
    # The server learns its session from its heartbeat.
    status, beat = await server.heartbeat()
    assert status == 200 and beat["session"]["session_id"] == sid
    assert (await api(node.port, "POST", f"/v1/sessions/{sid}/in-progress", {}))[0] == 200

    # A 5 s match, 2 s claims: the match outlives its claim's TTL more than twice,
    # and the health TTL too (the server keeps reporting).
    other, _ = await start_room(connect_player, node, "other")
    match_end = time.monotonic() + 5.0
    tried = 0
    while time.monotonic() < match_end:
        assert (await server.heartbeat())[0] == 200
        reply = await other.request("start_session")
        tried += 1
        # Never this server: there is no other, so no server at all.
        assert reply["ok"] is False and reply["error"]["code"] == "NO_SERVER_AVAILABLE", reply
        during = describe(gamelift, group, server.server_id)
        assert during is not None and during["UtilizationStatus"] == "UTILIZED"
        assert session_of(during["GameServerData"]) == sid
        await asyncio.sleep(0.7)  # time passing is what this test is about
    assert tried >= 5

    status, done = await api(node.port, "POST", f"/v1/sessions/{sid}/complete", {})
    assert status == 200 and done["session"]["session_state"] == "ENDED"
    assert describe(gamelift, group, server.server_id) is None  # deregistered
    status, beat = await server.heartbeat()
    assert status == 404 and beat["error"]["code"] == "SERVER_NOT_REGISTERED"
    # It registers again for its next match, and the waiting room gets it.
    await server.register()
    back = describe(gamelift, group, server.server_id)
    assert back is not None and back["UtilizationStatus"] == "AVAILABLE"
    assert (await other.ok("start_session"))["session"]["server_id"] == server.server_id
    gamelift.close()


async def test_failed_sessions_deregister_their_server(
        make_node, redis_url, fleetiq_local: FleetIQProcess, connect_player) -> None:
    group = new_group()
    gamelift = make_client("gamelift", endpoint_url=fleetiq_local.url)
    node = await make_node(redis_url=redis_url, fleetiq_group=group,
                           aws_endpoint_url=fleetiq_local.url, server_key=KEY,
                           connecting_timeout_seconds=1.0)
    left, never = GameServer(node, 1), GameServer(node, 2)
    await left.register()
    await never.register()

    # Everyone leaves while CONNECTING.
    host, sid = await start_room(connect_player, node, "host")
    guest = await connect_player(node, "guest")
    await guest.ok("join_session", session_id=sid)
    first = (await host.ok("start_session"))["session"]["server_id"]
    await guest.ok("leave_session")
    await host.ok("leave_session")
    await until("the abandoned session's server deregistered",
                lambda: describe(gamelift, group, first) is None)

    # A game server that never reports in: the session times out, the server goes.
    host2, _ = await start_room(connect_player, node, "host2")
    second = (await host2.ok("start_session"))["session"]["server_id"]
    assert second != first
    assert (await host2.event("session_closed"))["reason"] == "server_timeout"
    await until("the timed-out session's server deregistered",
                lambda: describe(gamelift, group, second) is None)
    gamelift.close()


async def test_claims_whose_answer_was_lost_are_reused_or_released(
        make_node, redis_url, fleetiq_local: FleetIQProcess, connect_player) -> None:
    """Issue 10 item 6: FleetIQ answers slower than the client's read timeout."""
    group = new_group()
    gamelift = make_client("gamelift", endpoint_url=fleetiq_local.url)
    ids = register_servers(gamelift, group, 3)
    alloc = FleetIQAllocator(group, endpoint_url=fleetiq_local.url, read_timeout=0.4,
                             base_delay=0.01, max_delay=0.05)
    node = await make_node(allocator=alloc, redis_url=redis_url, server_key=KEY)
    # Each of the first three claims is carried out, but only after 1 s.
    fleetiq_local.inject_faults({"ClaimGameServer": [{"delay": 1.0}] * 3})
    host, sid = await start_room(connect_player, node, "host")
    reply = await host.request("start_session")
    assert alloc.unknown_outcomes >= 1

    def settled() -> bool:
        rec_server = reply["session"]["server_id"] if reply["ok"] else None
        for server_id in ids:
            s = describe(gamelift, group, server_id)
            if s is None:
                continue
            held = s.get("ClaimStatus") == "CLAIMED" or s["UtilizationStatus"] == "UTILIZED"
            if held and server_id != rec_server:
                return False
            if server_id == rec_server and (s["UtilizationStatus"] != "UTILIZED"
                                            or session_of(s.get("GameServerData")) != sid):
                return False
        return True

    # No server stays claimed without a session: the session's own (if it
    # started) is UTILIZED for it, every other is released.
    await until("the three slow claims carried out", fleetiq_local.faults_played_out)
    await until("every claim without a session released", settled)
    if reply["ok"]:
        assert alloc.recovered >= 1 or alloc.claims == 1
    assert alloc.released + alloc.recovered >= 2
    # The released servers register again (as their processes do after a
    # heartbeat answers SERVER_NOT_REGISTERED), and the next room gets one.
    for n, server_id in enumerate(ids):
        if describe(gamelift, group, server_id) is None:
            status, _ = await api(node.port, "POST", "/v1/servers/register", {
                "server_id": server_id, "instance_id": instance_id(n),
                "connection_info": f"10.0.0.{n}:6060"})
            assert status == 200
    host2, _ = await start_room(connect_player, node, "host2")
    assert (await host2.ok("start_session"))["session"]["server_id"] in ids
    gamelift.close()


async def test_server_api_validation_and_static_allocator(node, make_node) -> None:
    keyed = await make_node(server_key=KEY)  # static allocator: no AWS at all
    status, body = await api(keyed.port, "POST", "/v1/servers/register",
                             {"server_id": "gs-1", "connection_info": "127.0.0.1:6060"})
    assert status == 200 and body["server"] == {"server_id": "gs-1", "fleetiq": False}
    status, body = await api(keyed.port, "POST", "/v1/servers/gs-1/heartbeat")
    assert status == 200 and body == {"ok": True, "server_id": "gs-1", "session": None}
    assert (await api(keyed.port, "POST", "/v1/servers/gs-1/deregister"))[0] == 200
    for bad in ({}, {"server_id": "gs-1"}, {"server_id": "x", "connection_info": "a:1"},
                {"server_id": "gs-1", "connection_info": 5},
                {"server_id": "gs-1", "connection_info": "a:1", "instance_id": "i-1"},
                {"server_id": "gs-1", "connection_info": "a:1", "data": "x" * 1025}):
        status, body = await api(keyed.port, "POST", "/v1/servers/register", bad)
        assert status == 400 and body["error"]["code"] == "BAD_REQUEST", bad
    assert (await api(keyed.port, "POST", "/v1/servers/register", {}, key=None))[0] == 401
    assert (await api(keyed.port, "POST", "/v1/servers/gs-1/heartbeat", key="no"))[0] == 403
    assert (await api(node.port, "POST", "/v1/servers/gs-1/heartbeat"))[0] == 403


async def test_fleetiq_registration_heartbeat_and_deregistration(
        make_node, redis_url, fleetiq_local: FleetIQProcess) -> None:
    group = new_group()
    gamelift = make_client("gamelift", endpoint_url=fleetiq_local.url)
    node = await make_node(redis_url=redis_url, fleetiq_group=group,
                           aws_endpoint_url=fleetiq_local.url, server_key=KEY)
    server = GameServer(node, 7)
    # Not registered yet: the heartbeat says so.
    status, body = await server.heartbeat()
    assert status == 404 and body["error"]["code"] == "SERVER_NOT_REGISTERED"
    status, body = await api(node.port, "POST", "/v1/servers/register", {
        "server_id": server.server_id, "connection_info": "10.1.0.7:7777"})
    assert status == 400 and "instance_id" in body["error"]["message"]
    assert (await server.register())["server"]["fleetiq"] is True
    assert describe(gamelift, group, server.server_id)["GameServerData"] == '{"map":"arena"}'
    # Registering again (a restarted process) replaces the idle registration.
    await server.register()
    assert (await server.heartbeat())[0] == 200
    assert (await api(node.port, "POST", f"/v1/servers/{server.server_id}/deregister"))[0] \
        == 200
    assert describe(gamelift, group, server.server_id) is None
    gamelift.close()


async def test_health_ttl_deregisters_a_silent_server(short_fleetiq: FleetIQProcess) -> None:
    group = new_group()
    gamelift = make_client("gamelift", endpoint_url=short_fleetiq.url)
    register_servers(gamelift, group, 2)
    # gs-0001 keeps reporting; gs-0000 goes silent and is deregistered after 2 s.
    deadline = time.monotonic() + 2.6
    while time.monotonic() < deadline:
        gamelift.update_game_server(GameServerGroupName=group, GameServerId="gs-0001",
                                    HealthCheck="HEALTHY")
        await asyncio.sleep(0.5)  # the health TTL passing is what is tested
    assert describe(gamelift, group, "gs-0000") is None
    assert describe(gamelift, group, "gs-0001") is not None
    gamelift.close()


async def test_start_reply_comes_before_session_started(make_mode_node) -> None:
    """protocol.md: the host's reply, then session_started, in both store modes."""
    node = await make_mode_node()
    async with websockets.connect(f"ws://127.0.0.1:{node.port}/ws") as ws:
        for n, msg in enumerate(({"type": "hello", "name": "h"}, {"type": "create_session"})):
            await ws.send(json.dumps({**msg, "id": n}))
            assert json.loads(await ws.recv())["ok"] is True
        await ws.send(json.dumps({"type": "start_session", "id": 9}))
        first = json.loads(await ws.recv())
        second = json.loads(await ws.recv())
    assert first["id"] == 9 and first["ok"] is True
    assert second["type"] == "session_started"
