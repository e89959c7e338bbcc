"""Issue 6 end to end in the real engine: Godot 3 players and a Godot game server.

The lobby node (Redis mode, FleetIQ allocator) runs in this process; FleetIQ is
`lobby fleetiq-local`, reached by the lobby with the real boto3 client; every Godot
process is a real headless `godot3-server` running a script of `clients/godot3/tests/`
on the addon the game would ship. Nothing is mocked. The game server's whole FleetIQ
life (issue 11: register, heartbeat, session, in-progress, complete, register again)
goes through the lobby's HTTP API: the test itself makes no boto3 call.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lobby.tickets import make_ticket
from tests.conftest import http_request
from tests.fleetiq_fixtures import FleetIQProcess, _fleetiq_long_ttl, fleetiq_local, instance_id
from tests.godot import Godot, GodotProcess, TcpProxy, free_udp_port, godot_runner, value

__all__ = ["_fleetiq_long_ttl", "fleetiq_local"]  # fixtures, used by name
KEY = "godot-e2e-server-key"


async def session_over_http(port: int, sid: str) -> dict:
    status, body = await http_request(port, "GET", f"/v1/sessions/{sid}",
                                      {"Authorization": f"Bearer {KEY}"})
    assert status == 200, body
    return json.loads(body)["session"]


@dataclass
class Match:
    """A session in IN_PROGRESS: two Godot players admitted by a Godot game server."""

    node: Any
    godot: Godot
    sid: str
    host: GodotProcess
    guest: GodotProcess
    host_id: str
    guest_id: str
    server: GodotProcess
    server_args: dict[str, Any]
    endpoint: str


async def start_server(godot: Godot, name: str, **server_args: Any) -> GodotProcess:
    server = await godot.run("e2e_game_server.gd", name, **server_args)
    await server.expect("SERVER_LISTENING")
    return server


def group_for(tmp_path: Path) -> str:
    # FleetIQ group names allow letters, digits, '-' and '.'.
    return f"godot-{os.getpid()}-{tmp_path.name}".replace("_", "-")


async def play_until_in_progress(node: Any, godot: Godot, fleetiq: FleetIQProcess,
                                 guest_url: str, tmp_path: Path, lobby_cut: bool) -> Match:
    """Host creates, guest browses and joins, host starts; both get tickets and
    are admitted over ENet; the game server reports in-progress."""
    enet_port = free_udp_port()
    server_args: dict[str, Any] = {
        "port": enet_port, "lobby": f"http://127.0.0.1:{node.port}", "key": KEY,
        "server_id": "godot-gs-1", "instance_id": instance_id(1), "heartbeat": 0.3,
        "done_file": tmp_path / "match-over", "stop_file": tmp_path / "stop"}
    server = await start_server(godot, "game-server", **server_args)
    # It registers itself through the lobby (FleetIQ's group exists from then on).
    assert value(await server.expect("SERVER_REGISTERED n=1"), "status") == "200"

    cut = "yes" if lobby_cut else "no"
    host = await godot.run("e2e_player.gd", "host", mode="host",
                           url=f"ws://127.0.0.1:{node.port}/ws", player="alice",
                           session_name="godot night", lobby_cut="no")
    sid = value(await host.expect("HOST_CREATED"), "session")
    guest = await godot.run("e2e_player.gd", "guest", mode="guest", url=guest_url,
                            player="bob", session=sid, lobby_cut=cut)
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
    await server.expect("SERVER_ADMITTED player=" + host_id)
    await server.expect("SERVER_ADMITTED player=" + guest_id)
    assert value(await server.expect("SERVER_SESSION"), "session") == sid
    # The heartbeat named the session too (however the tickets raced it).
    assert value(await server.expect("SERVER_ASSIGNED"), "session") == sid
    assert "ok=True status=200" in await server.expect("SERVER_REPORTED call=in-progress")
    await host.expect("HOST_IN_PROGRESS")
    await guest.expect("GUEST_IN_PROGRESS")
    state = await session_over_http(node.port, sid)
    assert state["session_state"] == "IN_PROGRESS" and state["server_id"] == "godot-gs-1"
    return Match(node, godot, sid, host, guest, host_id, guest_id, server, server_args,
                 endpoint)


async def complete_match(m: Match, server: GodotProcess,
                         guest: tuple[GodotProcess, str] | None = None) -> None:
    """The game server reports the match over; both players see it closed."""
    guest_process, guest_marker = guest or (m.guest, "GUEST_OK")
    registered = len([line for line in server.lines if line.startswith("SERVER_REGISTERED")])
    Path(m.server_args["done_file"]).write_text("over")
    assert "ok=True status=200" in await server.expect("SERVER_REPORTED call=complete")
    # complete deregistered it; it registered again for its next match, and passed.
    again = await server.expect(f"SERVER_REGISTERED n={registered + 1}")
    assert value(again, "status") == "200"
    await server.passes("SERVER_OK")
    status, body = await http_request(m.node.port, "POST", "/v1/servers/godot-gs-1/heartbeat",
                                      {"Authorization": f"Bearer {KEY}"})
    assert status == 200 and json.loads(body)["session"] is None
    await m.host.passes("HOST_OK")
    await guest_process.passes(guest_marker)
    status, _ = await http_request(m.node.port, "GET", f"/v1/sessions/{m.sid}",
                                   {"Authorization": f"Bearer {KEY}"})
    assert status == 404


async def test_godot_host_and_guest_play_through_a_ticketed_enet_server(
    make_node, redis_url: str, fleetiq_local: FleetIQProcess, tmp_path: Path
) -> None:
    node = await make_node(redis_url=redis_url, fleetiq_group=group_for(tmp_path),
                           aws_endpoint_url=fleetiq_local.url, server_key=KEY)
    # The guest reaches the lobby through a relay the test can cut.
    proxy = await TcpProxy(node.port).start()
    async with godot_runner(tmp_path) as godot:
        m = await play_until_in_progress(node, godot, fleetiq_local,
                                         f"ws://127.0.0.1:{proxy.port}/ws", tmp_path, True)

        # A ticket signed with another key, for a real session and player.
        forged = make_ticket(b"not-the-server-key", m.sid, m.guest_id, int(time.time()) + 300)
        intruder = await godot.run("e2e_intruder.gd", "intruder", endpoint=m.endpoint,
                                   ticket=forged)
        assert value(await intruder.expect("INTRUDER_REFUSED"), "reason") == "bad_signature"
        await intruder.passes("INTRUDER_OK")
        await m.server.expect("SERVER_REFUSED reason=bad_signature")

        # The guest's WebSocket dies under it; its SessionManager resumes.
        assert proxy.cut() == 1
        await m.guest.expect("GUEST_RECONNECTING")
        resumed = await m.guest.expect("GUEST_RESUMED")
        assert value(resumed, "session") == m.sid and value(resumed, "state") == "IN_PROGRESS"
        assert proxy.accepted == 2
        # The lobby socket's drop left the ENet link alone.
        assert not [line for line in m.guest.lines if "GAME_DISCONNECTED" in line]

        await complete_match(m, m.server)
        admitted = [line for line in m.server.lines if line.startswith("SERVER_ADMITTED")]
        assert len(admitted) == 2
    await proxy.close()


async def test_godot_players_rejoin_a_restarted_game_server_with_fresh_tickets(
    make_node, redis_url: str, fleetiq_local: FleetIQProcess, tmp_path: Path
) -> None:
    node = await make_node(redis_url=redis_url, fleetiq_group=group_for(tmp_path),
                           aws_endpoint_url=fleetiq_local.url, server_key=KEY)
    async with godot_runner(tmp_path) as godot:
        m = await play_until_in_progress(node, godot, fleetiq_local,
                                         f"ws://127.0.0.1:{node.port}/ws", tmp_path, False)
        Path(m.server_args["stop_file"]).write_text("stop")
        await m.server.passes("SERVER_STOPPED")
        # The same server (id, port) comes back, as after a crash and restart.
        Path(m.server_args["stop_file"]).unlink()
        restarted = await start_server(godot, "game-server-2", **m.server_args)
        # Its registration finds the live session using it: it is registered (409).
        assert value(await restarted.expect("SERVER_REGISTERED n=1"), "status") == "409"
        for player, tag in ((m.host, "HOST"), (m.guest, "GUEST")):
            dropped = await player.expect(f"{tag}_GAME_DISCONNECTED")
            assert value(dropped, "state") == "IN_PROGRESS"
        # The MultiplayerManagers asked the lobby again and were admitted anew.
        assert value(await m.host.expect("HOST_IN_GAME player=" + m.host_id + " n=2"),
                     "n") == "2"
        await m.guest.expect("GUEST_IN_GAME player=" + m.guest_id + " n=2")
        await restarted.expect("SERVER_SESSION session=" + m.sid)
        # Reporting in-progress again is harmless: the session stays IN_PROGRESS.
        assert "ok=True status=200" in await restarted.expect(
            "SERVER_REPORTED call=in-progress")
        assert (await session_over_http(node.port, m.sid))["session_state"] == "IN_PROGRESS"
        await complete_match(m, restarted)


async def test_a_crashed_godot_guest_restarts_into_its_running_match(
    make_node, redis_url: str, fleetiq_local: FleetIQProcess, tmp_path: Path
) -> None:
    node = await make_node(redis_url=redis_url, fleetiq_group=group_for(tmp_path),
                           aws_endpoint_url=fleetiq_local.url, server_key=KEY)
    url = f"ws://127.0.0.1:{node.port}/ws"
    async with godot_runner(tmp_path) as godot:
        m = await play_until_in_progress(node, godot, fleetiq_local, url, tmp_path, False)
        await m.guest.stop()  # SIGKILL: no leave, no close frame, no ENet goodbye
        # Same user:// directory: the restarted game finds the saved resume token.
        again = await godot.run("e2e_player.gd", "guest-restarted", data_dir="guest",
                                mode="rejoin", url=url, player="bob", session=m.sid,
                                lobby_cut="no")
        assert value(await again.expect("REJOIN_HELLO"), "player") == m.guest_id
        assert value(await again.expect("REJOIN_RESUMED"), "state") == "IN_PROGRESS"
        # Its MultiplayerManager rejoined the game server with a fresh ticket.
        assert value(await again.expect("REJOIN_IN_GAME"), "player") == m.guest_id
        await complete_match(m, m.server, (again, "REJOIN_OK"))
    # The server's whole output is in: the guest was admitted once per process.
    admitted = [line for line in m.server.lines if line == "SERVER_ADMITTED player=" + m.guest_id]
    assert len(admitted) == 2
    # The dead process's peer was said to be gone when the new one replaced it
    # (long before ENet's own timeout would have noticed).
    gone = m.server.lines.index("SERVER_PLAYER_GONE player=" + m.guest_id)
    second = [i for i, line in enumerate(m.server.lines)
              if line == "SERVER_ADMITTED player=" + m.guest_id][1]
    assert gone < second
    # The host never saw the guest leave: its seat was held through the crash.
    assert not [line for line in m.host.lines if line.startswith("HOST_PLAYER_LEFT")]


async def test_a_godot_server_whose_session_failed_registers_again(
    make_node, redis_url: str, fleetiq_local: FleetIQProcess, tmp_path: Path, connect_player
) -> None:
    """Everyone leaves while CONNECTING: the lobby deregisters the server, whose next
    heartbeat answers SERVER_NOT_REGISTERED; it ends the match and registers again."""
    node = await make_node(redis_url=redis_url, fleetiq_group=group_for(tmp_path),
                           aws_endpoint_url=fleetiq_local.url, server_key=KEY)
    async with godot_runner(tmp_path) as godot:
        server = await start_server(
            godot, "game-server", port=free_udp_port(), lobby=f"http://127.0.0.1:{node.port}",
            key=KEY, server_id="godot-gs-2", instance_id=instance_id(2), heartbeat=0.3,
            done_file=tmp_path / "never", registrations=2)
        assert value(await server.expect("SERVER_REGISTERED n=1"), "status") == "200"
        host = await connect_player(node, "host")
        sid = (await host.ok("create_session"))["session"]["session_id"]
        assert (await host.ok("start_session"))["session"]["server_id"] == "godot-gs-2"
        assert value(await server.expect("SERVER_ASSIGNED"), "session") == sid
        await host.ok("leave_session")
        await server.expect("SERVER_MATCH_ENDED")
        assert value(await server.expect("SERVER_REGISTERED n=2"), "status") == "200"
        await server.passes("SERVER_OK")
