"""The Godot 3 addon's pieces in the real headless engine: endpoint parsing,
join tickets across the two languages, deferred request completion, and a
crash-restart that resumes from the token kept in user://."""

from __future__ import annotations

import time
from pathlib import Path

from lobby.tickets import make_ticket, verify_ticket
from tests.conftest import free_port
from tests.godot import godot_runner, value

KEY = "unit-server-key"


async def test_endpoints_tickets_and_deferred_completion(make_node, tmp_path: Path) -> None:
    node = await make_node()
    dead_url = f"ws://127.0.0.1:{free_port()}/ws"
    now = int(time.time())
    ticket = make_ticket(KEY, "s_abc-DEF_1", "p_xyz_9-Q", now + 300)
    expired = make_ticket(KEY, "s_abc-DEF_1", "p_xyz_9-Q", now - 1)
    async with godot_runner(tmp_path) as godot:
        unit = await godot.run("unit.gd", "unit", key=KEY, ticket=ticket, expired=expired,
                               url=f"ws://127.0.0.1:{node.port}/ws", dead_url=dead_url)
        await unit.passes("UNIT_OK")
    lines = unit.lines
    parsed = {line.split(" ")[1]: line.split(" -> ")[1] for line in lines
              if line.startswith("ENDPOINT ")}
    assert parsed == {
        "127.0.0.1:6060": "[127.0.0.1, 6060]",
        "[::1]:7000": "[::1, 7000]",
        "[2001:db8::5]:65535": "[2001:db8::5, 65535]",
        "game.example:1": "[game.example, 1]",
        # An IPv6 host must be bracketed, else the port is ambiguous.
        "::1:6060": "[]",
        "127.0.0.1": "[]",
        "127.0.0.1:0": "[]",
        "127.0.0.1:70000": "[]",
        ":6060": "[]",
        "[::1]6060": "[]",
        "host:port": "[]",
    }
    tickets = {line.split(" ")[1]: line for line in lines if line.startswith("TICKET ")}
    valid = tickets["valid"]
    assert value(valid, "ok") == "True"
    assert value(valid, "session") == "s_abc-DEF_1" and value(valid, "player") == "p_xyz_9-Q"
    assert value(valid, "expires") == str(now + 300)
    assert tickets["tampered"].endswith(" bad_signature")
    assert tickets["wrong_key"].endswith(" bad_signature")
    assert tickets["expired"].endswith(" expired")
    assert tickets["garbage"].endswith(" malformed")
    # The other way round: what GDScript signs, the lobby's Python verifies.
    made = tickets["made"].split(" ")[2]
    claims = verify_ticket(KEY, made, time.time())
    assert (claims.session_id, claims.player_id) == ("s_godot", "p_godot")
    request = next(line for line in lines if line.startswith("REQUEST "))
    assert request == "REQUEST NOT_CONNECTED NOT_CONNECTED"
    # connect_and_hello ends when the lobby cannot be reached, saying why...
    dead = next(line for line in lines if line.startswith("CONNECT dead "))
    assert dead.startswith("CONNECT dead NOT_CONNECTED cannot reach " + dead_url), dead
    assert "gave up after 1 attempts" in dead
    # ...and with the hello reply when it can.
    live = next(line for line in lines if line.startswith("CONNECT live "))
    assert live == "CONNECT live ok=True name=unit state=online", live
    # start_session's reply may wait for a throttled claim: it gets 40 s, not 10.
    assert "DEADLINE ping=10 start=40" in lines


async def test_a_restarted_game_resumes_from_the_token_in_user_dir(
    node, connect_player, tmp_path: Path
) -> None:
    url = f"ws://127.0.0.1:{node.port}/ws"
    async with godot_runner(tmp_path) as godot:
        first = await godot.run("restart.gd", "first", data_dir="carol", url=url, mode="first")
        await first.passes("FIRST_OK")
        line = await first.expect("FIRST ")
        player, sid = value(line, "player"), value(line, "session")
        token_file = tmp_path / "userdata/carol/godot/app_userdata/lobby-godot3/lobby_resume.cfg"
        assert player in token_file.read_text()

        # The first process is gone; its seat is held. Another player watches.
        watcher = await connect_player(node, "watcher")
        await watcher.ok("join_session", session_id=sid)
        second = await godot.run("restart.gd", "second", data_dir="carol", url=url,
                                 mode="second")
        await second.passes("SECOND_OK")
        again = await second.expect("SECOND ")
        assert value(again, "player") == player and value(again, "session") == sid
        assert value(again, "host") == "True" and value(again, "state") == "WAITING"
    # Resumed, not replaced: the watcher saw nobody leave, only the host come back.
    # (Presence: the first process's drop may be noticed after the watcher joined,
    # and the second process has quit too by now.)
    seen = [(ev["type"], ev["player_id"]) for ev in [await watcher.event()]]
    if seen[0][0] == "player_disconnected":
        seen.append(((ev := await watcher.event())["type"], ev["player_id"]))
    assert seen[-1] == ("player_reconnected", player), seen
    await watcher.ok("ping")
    while not watcher.no_event():
        assert (await watcher.event())["type"] == "player_disconnected"


async def test_hello_with_the_backends_token(make_node, tmp_path: Path) -> None:
    import jwt

    secret = "backend-and-lobby-share-this-32-bytes"
    node = await make_node(auth="jwt", jwt_secret=secret)
    now = int(time.time())
    token = jwt.encode({"sub": "godot-player-7", "name": "Godette", "exp": now + 300},
                       secret, algorithm="HS256")
    expired = jwt.encode({"sub": "godot-player-7", "exp": now - 120}, secret,
                         algorithm="HS256")
    async with godot_runner(tmp_path) as godot:
        auth = await godot.run("auth.gd", "auth", url=f"ws://127.0.0.1:{node.port}/ws",
                               token=token, bad=expired)
        await auth.passes("AUTH_OK")
    refused = next(line for line in auth.lines if line.startswith("REFUSED "))
    assert value(refused, "code") == "NOT_AUTHENTICATED" and "expired" in refused
    hello = next(line for line in auth.lines if line.startswith("HELLO "))
    assert value(hello, "player") == "godot-player-7" and value(hello, "name") == "Godette"
    assert value(hello, "kept") == "True"
