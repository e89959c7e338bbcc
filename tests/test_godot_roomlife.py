"""Room life in the Godot 3 example waiting room, in the real headless engine,
against a real lobby node and a real WebSocket guest: ready-up unlocks Start,
chat both ways, a cut guest socket shown greyed with its countdown and back."""

from __future__ import annotations

from pathlib import Path

from lobby.app import LobbyNode
from tests.godot import godot_runner, value


async def test_waiting_room_ready_chat_and_presence(node: LobbyNode, connect_player,
                                                    tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{node.port}/ws"
    async with godot_runner(tmp_path) as godot:
        ui = await godot.run("ui_room_life.gd", "room", url=url)
        hosted = await ui.expect("RL_HOSTED")
        sid = value(hosted, "session")
        assert value(hosted, "rule") == "all_ready"

        guest = await connect_player(node, "rl-guest")
        await guest.ok("join_session", session_id=sid)
        assert value(await ui.expect("RL_JOINED"), "start_disabled") == "True"
        # The host ticked its box in the scene: the guest sees it, Start stays locked.
        ready = await guest.event("player_ready")
        assert ready["ready"] is True and ready["player_id"] != guest.player_id
        host_ready = await ui.expect("RL_HOST_READY")
        assert value(host_ready, "start_disabled") == "True"
        assert "not_ready:_rl-guest" in value(host_ready, "status")
        refused = await guest.error("start_session", "NOT_HOST")
        assert refused["error"]["code"] == "NOT_HOST"

        await guest.ok("set_ready", ready=True)
        assert value(await ui.expect("RL_START_UNLOCKED"), "checked") == "True"

        # A line typed into the scene reaches the guest; the guest's line shows there.
        line = await guest.event("chat_message")
        assert (line["name"], line["text"]) == ("rl-host", "gl hf from the scene")
        await guest.ok("send_chat", text="hi from the wire")
        await ui.expect("RL_CHAT_SHOWN")

        # The guest's socket is cut (no close frame): greyed, with its countdown.
        guest.ws.transport.abort()
        dropped = value(await ui.expect("RL_GUEST_DISCONNECTED"), "line")
        assert dropped.startswith("rl-guest_(disconnected,_") and dropped.endswith("_s)")
        back = await connect_player(node, None)
        reply = await back.ok("hello", resume_token=guest.resume_token)
        assert reply["resumed"] is True
        assert [m["text"] for m in reply["chat"]] == ["gl hf from the scene", "hi from the wire"]
        await ui.expect("RL_GUEST_RECONNECTED")

        started = await back.event("session_started")
        assert started["server_endpoint"] == "127.0.0.1:6060"
        assert value(await ui.expect("RL_STARTED"), "status") == "CONNECTING_server_127.0.0.1:6060"
        await ui.passes("RL_OK")
