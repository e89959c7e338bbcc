"""Lobby data through the Godot 3 edition in the real headless engine: an unlisted
room created with attributes, a second Godot process joining it by code, the
host's settings edit followed by the guest's mirror, and the guest's attributes."""

from __future__ import annotations

from pathlib import Path

from tests.godot import godot_runner, value


async def test_unlisted_room_join_by_code_and_settings(node, connect_player,
                                                       tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{node.port}/ws"
    async with godot_runner(tmp_path) as godot:
        host = await godot.run("lobbydata.gd", "host", url=url, mode="host")
        line = await host.expect("HOST_CODE ")
        code = value(line, "code")
        assert (len(code), value(line, "visibility"), value(line, "map")) == (6, "unlisted", "dust")
        browser = await connect_player(node, "browser")
        assert (await browser.ok("list_sessions"))["sessions"] == []  # unlisted

        # 70 listed rooms of ~2 KiB each: one page is over 64 KiB.
        fat = {f"k{i:02d}": "é" * 60 + f"{i:04d}" for i in range(16)}
        for i in range(70):
            other = await connect_player(node, f"h{i}")
            await other.ok("create_session", attributes=fat)
        guest = await godot.run("lobbydata.gd", "guest", url=url, mode="guest", code=code)
        assert await guest.expect("GUEST_LISTED ") == "GUEST_LISTED sessions=70 attributes=16"
        joined = await guest.expect("GUEST_JOINED ")
        assert value(joined, "code") == code
        assert value(await host.expect("HOST_SAW_JOIN "), "name") == "guest"
        assert await host.expect("HOST_UPDATED ") == "HOST_UPDATED name=Aztec CTF locked=True"
        mirror = await guest.expect("GUEST_MIRROR ")
        assert mirror == ("GUEST_MIRROR name=Aztec CTF max=6 map=aztec has_mode=False "
                          "locked=True")
        assert await guest.expect("GUEST_PLAYER_UPDATED ") == "GUEST_PLAYER_UPDATED team=red"
        assert await host.expect("HOST_PLAYER_UPDATED ") == "HOST_PLAYER_UPDATED team=red"
        await guest.passes("GUEST_OK")
        await host.passes("HOST_OK")
        # Locked now: nobody else gets in, by code or by id.
        sid = value(joined, "session")
        await browser.error("join_session", "SESSION_LOCKED", join_code=code)
        await browser.error("join_session", "SESSION_LOCKED", session_id=sid)


async def test_example_menus_host_unlisted_join_by_code_ban_lock_and_edit(
        node, tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{node.port}/ws"
    async with godot_runner(tmp_path) as godot:
        host = await godot.run("ui_lobbydata.gd", "host", url=url, mode="host")
        line = await host.expect("UI_CODE ")
        code = value(line, "code")
        assert value(line, "visibility") == "unlisted"
        assert value(line, "label") == f"Code:_{code}"
        assert sorted(value(line, "attrs").split(",")) == ["map:dust", "mode:ctf"]
        guest = await godot.run("ui_lobbydata.gd", "guest", url=url, mode="guest", code=code)
        assert await guest.expect("UI_BROWSE ") == "UI_BROWSE items=0"  # unlisted
        assert await guest.expect("UI_JOINED ") == f"UI_JOINED code={code}"
        await host.expect("UI_BANNED_GUEST")
        rejoin = await guest.expect("UI_REJOIN ")
        assert value(rejoin, "error") == "the_host_banned_you_from_this_session", rejoin
        await guest.passes("UI_GUEST_OK")
        locked = await host.expect("UI_LOCKED ")
        assert value(locked, "button") == "Unlock" and "locked" in value(locked, "attrs")
        saved = await host.expect("UI_SAVED ")
        assert value(saved, "title") == "renamed"
        assert sorted(value(saved, "attrs").split(",")) == ["locked", "map:aztec", "mode:ctf"]
        await host.passes("UI_HOST_OK")
