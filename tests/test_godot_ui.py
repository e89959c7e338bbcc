"""The Godot 3 example menus, loaded in the real headless engine and driven by
pressing their buttons, against a real lobby node and a real WebSocket player."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from lobby.aws import make_client
from tests.fleetiq_fixtures import FleetIQProcess, _fleetiq_long_ttl, fleetiq_local, instance_id
from tests.godot import godot_runner, value

__all__ = ["_fleetiq_long_ttl", "fleetiq_local"]  # fixtures, used by name


async def test_waiting_room_scene_follows_the_session(
    make_node, fleetiq_local: FleetIQProcess, connect_player, tmp_path: Path
) -> None:
    group = f"godot-ui-{os.getpid()}"  # empty until the retry: the first start fails
    node = await make_node(fleetiq_group=group, aws_endpoint_url=fleetiq_local.url)
    retry_file = tmp_path / "retry"
    async with godot_runner(tmp_path) as godot:
        ui = await godot.run("ui_waiting_room.gd", "ui", url=f"ws://127.0.0.1:{node.port}/ws",
                             retry_file=retry_file)
        sid = value(await ui.expect("UI_HOSTED"), "session")

        guest = await connect_player(node, "ui-guest")
        await guest.ok("join_session", session_id=sid)
        members = (await ui.expect("UI_MEMBERS")).split(" ", 1)[1].split("|")
        assert members == ["ui-host (host) (you)", "ui-guest"]

        # The scene's Kick button removed the guest.
        kicked = await guest.event("kicked")
        assert kicked["session_id"] == sid
        assert value(await ui.expect("UI_KICKED"), "player") == guest.player_id

        await guest.ok("join_session", session_id=sid)
        await ui.expect("UI_REJOINED")
        failed = await guest.event("session_start_failed")
        assert failed["error"]["code"] == "NO_SERVER_AVAILABLE"
        assert "NO_SERVER_AVAILABLE" in await ui.expect("UI_START_FAILED")

        gamelift = make_client("gamelift", endpoint_url=fleetiq_local.url)
        await asyncio.to_thread(
            gamelift.register_game_server, GameServerGroupName=group,
            GameServerId="ui-gs", InstanceId=instance_id(7), ConnectionInfo="127.0.0.1:7777")
        retry_file.write_text("go")
        started = await guest.event("session_started")
        assert started["server_endpoint"] == "127.0.0.1:7777"
        assert value(await ui.expect("UI_STARTED"), "status") == "CONNECTING_server_127.0.0.1:7777"

        await guest.ok("leave_session")
        await ui.expect("UI_MEMBER_LEFT")
        await ui.passes("UI_OK")
    # The scene's Leave button left: the session is gone with its last member.
    await guest.error("join_session", "SESSION_NOT_FOUND", session_id=sid)


async def test_browse_scene_pages_locks_and_joins_with_a_password(
    node, connect_player, tmp_path: Path
) -> None:
    hosts = []
    for name, password in (("open-1", None), ("open-2", None), ("locked-3", "hunter2")):
        host = await connect_player(node, name)
        fields = {"password": password} if password else {}
        created = await host.ok("create_session", name=name, max_players=4, **fields)
        hosts.append(host)
    locked_sid = created["session"]["session_id"]
    async with godot_runner(tmp_path) as godot:
        ui = await godot.run("ui_browse.gd", "browse", url=f"ws://127.0.0.1:{node.port}/ws",
                             password="hunter2")
        # Newest first, two per page; the password session carries the lock.
        page1 = await ui.expect("BROWSE_PAGE1")
        assert page1 == "BROWSE_PAGE1 next=True [locked] locked-3 (1/4)|open-2 (1/4)"
        assert await ui.expect("BROWSE_PAGE2") == "BROWSE_PAGE2 next=False open-1 (1/4)"
        assert await ui.expect("BROWSE_SELECTED") == "BROWSE_SELECTED prompt=True"
        refused = await ui.expect("BROWSE_JOIN_REFUSED")
        assert value(refused, "prompt") == "True" and "password" in value(refused, "error")
        joined = await ui.expect("BROWSE_JOINED")
        assert value(joined, "session") == locked_sid and value(joined, "players") == "2"
        await ui.passes("BROWSE_OK")
    # The locked session's host saw the browser join through the scene.
    event = await hosts[2].event("player_joined")
    assert event["session_id"] == locked_sid and event["name"] == "browser"
