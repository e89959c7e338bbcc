"""Issue 6 end to end in the real engine: Godot 3 players and a Godot game server.

The lobby node (Redis mode, FleetIQ allocator) runs in this process; FleetIQ is
`lobby fleetiq-local`, reached with the real boto3 client; every Godot process
is a real headless `godot3-server` running a script of `clients/godot3/tests/`
on the addon the game would ship. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lobby.aws import make_client
from lobby.tickets import make_ticket
from tests.conftest import http_request
from tests.fleetiq_fixtures import FleetIQProcess, instance_id, run_fleetiq_local
from tests.godot import TcpProxy, free_udp_port, godot_runner

KEY = "godot-e2e-server-key"


@pytest.fixture(scope="module")
def fleetiq() -> Iterator[FleetIQProcess]:
    with run_fleetiq_local(claim_ttl_seconds=60.0) as server:
        yield server


def value(line: str, key: str) -> str:
    """`key=value` out of a marker line."""
    for part in line.split():
        if part.startswith(key + "="):
            return part[len(key) + 1:]
    raise AssertionError(f"no {key}= in {line!r}")


async def session_over_http(port: int, sid: str) -> dict:
    status, body = await http_request(port, "GET", f"/v1/sessions/{sid}",
                                      {"Authorization": f"Bearer {KEY}"})
    assert status == 200, body
    return json.loads(body)["session"]


async def test_godot_host_and_guest_play_through_a_ticketed_enet_server(
    make_node, redis_url: str, fleetiq: FleetIQProcess, tmp_path: Path
) -> None:
    group = f"godot-{os.getpid()}"
    node = await make_node(redis_url=redis_url, fleetiq_group=group,
                           aws_endpoint_url=fleetiq.url, server_key=KEY)
    lobby_ws = f"ws://127.0.0.1:{node.port}/ws"
    enet_port = free_udp_port()
    done_file = tmp_path / "match-over"
    proxy = await TcpProxy(node.port).start()
    async with godot_runner(tmp_path) as godot:
        server = await godot.run(
            "e2e_game_server.gd", "game-server", port=enet_port,
            lobby=f"http://127.0.0.1:{node.port}", key=KEY, server_id="godot-gs-1",
            done_file=done_file)
        await server.expect("SERVER_LISTENING")
        # The game's own registration code does this with boto3 at boot.
        gamelift = make_client("gamelift", endpoint_url=fleetiq.url)
        await asyncio.to_thread(
            gamelift.register_game_server, GameServerGroupName=group,
            GameServerId="godot-gs-1", InstanceId=instance_id(1),
            ConnectionInfo=f"127.0.0.1:{enet_port}")

        host = await godot.run("e2e_player.gd", "host", mode="host", url=lobby_ws,
                               player="alice", session_name="godot night")
        sid = value(await host.expect("HOST_CREATED"), "session")
        # The guest reaches the lobby through a relay the test can cut.
        guest = await godot.run("e2e_player.gd", "guest", mode="guest",
                                url=f"ws://127.0.0.1:{proxy.port}/ws", player="bob", session=sid)
        guest_id = value(await guest.expect("GUEST_HELLO"), "player")
        host_id = value(await host.expect("HOST_HELLO"), "player")
        assert value(await guest.expect("GUEST_LISTED"), "players") == "1"
        assert value(await guest.expect("GUEST_JOINED"), "members") == "2"
        saw = await host.expect("HOST_SAW_JOIN")
        assert value(saw, "player") == guest_id and value(saw, "name") == "bob"

        endpoint = f"127.0.0.1:{enet_port}"
        assert value(await host.expect("HOST_STARTED"), "endpoint") == endpoint
        for player, tag in ((host, "HOST"), (guest, "GUEST")):
            assert value(await player.expect(f"{tag}_SESSION_STARTED"), "endpoint") == endpoint
        assert value(await host.expect("HOST_IN_GAME"), "player") == host_id
        assert value(await guest.expect("GUEST_IN_GAME"), "player") == guest_id
        admitted = {value(line, "player") for line in [
            await server.expect("SERVER_ADMITTED player=" + host_id),
            await server.expect("SERVER_ADMITTED player=" + guest_id)]}
        assert admitted == {host_id, guest_id}
        assert value(await server.expect("SERVER_SESSION"), "session") == sid
        assert "ok=True status=200" in await server.expect("SERVER_REPORTED call=in-progress")
        await host.expect("HOST_IN_PROGRESS")
        await guest.expect("GUEST_IN_PROGRESS")
        state = await session_over_http(node.port, sid)
        assert state["session_state"] == "IN_PROGRESS" and state["server_id"] == "godot-gs-1"

        # A ticket signed with another key, for a real session and player.
        forged = make_ticket(b"not-the-server-key", sid, guest_id, int(time.time()) + 300)
        intruder = await godot.run("e2e_intruder.gd", "intruder", endpoint=endpoint,
                                   ticket=forged)
        assert value(await intruder.expect("INTRUDER_REFUSED"), "reason") == "bad_signature"
        await intruder.passes("INTRUDER_OK")
        await server.expect("SERVER_REFUSED reason=bad_signature")

        # The guest's WebSocket dies under it; its SessionManager resumes.
        assert proxy.cut() == 1
        await guest.expect("GUEST_RECONNECTING")
        resumed = await guest.expect("GUEST_RESUMED")
        assert value(resumed, "session") == sid and value(resumed, "state") == "IN_PROGRESS"
        assert proxy.accepted == 2

        done_file.write_text("over")
        await server.passes("SERVER_OK")
        await host.passes("HOST_OK")
        await guest.passes("GUEST_OK")
        assert "ok=True status=200" in await server.expect("SERVER_REPORTED call=complete")
        assert not [line for line in server.lines if line.startswith("SERVER_ADMITTED")
                    and guest_id not in line and host_id not in line]
    await proxy.close()
    status, _ = await http_request(node.port, "GET", f"/v1/sessions/{sid}",
                                   {"Authorization": f"Bearer {KEY}"})
    assert status == 404
