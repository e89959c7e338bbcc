"""`lobby client`: the interactive terminal client driven through a real pty
(pexpect), and `--script` replaying a session."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pexpect

from tests.conftest import ws_url

LOBBY = [sys.executable, "-m", "lobby.cli", "client"]


async def expect(child: pexpect.spawn, pattern: str, timeout: float = 10) -> str:
    """Wait for `pattern` in a thread: the lobby node runs on this test's loop."""
    await asyncio.to_thread(child.expect, pattern, timeout=timeout)
    return str(child.match.group(0))


async def expect_all(child: pexpect.spawn, patterns: list[str], timeout: float = 10) -> None:
    left = list(patterns)
    while left:
        index = await asyncio.to_thread(child.expect, left, timeout=timeout)
        left.pop(index)


async def test_interactive_session_through_a_pty(node, connect_player) -> None:
    child = pexpect.spawn(LOBBY[0], [*LOBBY[1:], ws_url(node), "--name", "alice"],
                          encoding="utf-8", timeout=10, dimensions=(40, 200))
    try:
        await expect(child, r"connected to .* as alice \(p_[\w-]+\)")
        await expect(child, "lobby> ")
        # Tab completes the command; shell quoting gives a name with a space.
        child.send("cre\t")
        await expect(child, "create ")
        child.sendline('"Friday night" 4')
        line = await expect(child, r'created [\w-]+ "Friday night" WAITING 1/4 \[alice\]')
        session_id = line.split()[1]

        # Events are printed as they arrive, while the prompt waits.
        bob = await connect_player(node, "bob")
        await bob.ok("join_session", session_id=session_id)
        await expect(child, r"\* player_joined player_id=p_[\w-]+ name=bob\s+-> "
                            rf'{session_id} "Friday night" WAITING 2/4 \[alice, bob\]')

        # kick <TAB> offers the other members' ids.
        child.send("kick \t")
        await expect(child, bob.player_id + " ")
        child.sendline("")
        # The reply and the event, in either order (the event may come first).
        await expect_all(child, [f"kicked {bob.player_id}",
                                 r"\* player_left player_id=\S+ reason=kicked"])

        await bob.ok("join_session", session_id=session_id)
        await expect(child, r"\* player_joined .*name=bob")
        child.sendline("start")
        # Not inside the event's own text ("session_started ... CONNECTING 2/4 at ..."):
        # when the event comes first, a bare "started" would match there and eat it.
        await expect_all(child, [r"(?<![\w])started .* CONNECTING 2/4 at 127\.0\.0\.1:6060",
                                 r"\* session_started server_id=static"])
        started = await bob.event("session_started")
        assert started["server_endpoint"] == "127.0.0.1:6060"
        child.sendline("ticket")
        await expect(child, "error TICKETS_DISABLED")
        child.sendline("frobnicate")
        await expect(child, "unknown command 'frobnicate'")
        child.sendline("quit")
        await asyncio.to_thread(child.expect, pexpect.EOF, timeout=10)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


async def test_script_replays_a_session_and_stops_at_a_failure(node, connect_player,
                                                               tmp_path: Path) -> None:
    host = await connect_player(node, "host")
    room = (await host.ok("create_session", name="Scripted", max_players=3))["session"]
    script = tmp_path / "guest.lobby"
    script.write_text(
        "# a guest's session, replayed\n"
        "list\n"
        f"join {room['join_code']}\n"
        "wait session_started 10\n"
        "session\n"
        "leave\n"
        "join no-such-session\n"
        "ping\n"
    )
    proc = await asyncio.create_subprocess_exec(
        *LOBBY, ws_url(node), "--name", "guest", "--script", str(script),
        stdout=asyncio.subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    # The guest's join reaches the host; the host starts; the script's wait ends.
    await host.event("player_joined", timeout=10)
    await host.ok("start_session")
    out = (await asyncio.wait_for(proc.stdout.read(), 20)).decode()
    code = await proc.wait()
    assert code == 1, out  # stopped at the failed join: ping never ran
    assert f'  {room["session_id"]} "Scripted" WAITING 1/3' in out
    # Joined by the join code the host's reply carried; members see the code.
    assert (f'joined {room["session_id"]} "Scripted" WAITING 2/3 [host, guest] '
            f'code {room["join_code"]}') in out
    assert "* session_started server_id=static server_endpoint=127.0.0.1:6060" in out
    assert "CONNECTING 2/3 at 127.0.0.1:6060 [host, guest]" in out
    assert "left the session" in out
    assert out.rstrip().endswith("error SESSION_NOT_FOUND: session not found")
    assert "> ping" not in out


async def test_cannot_connect_says_so() -> None:
    from tests.conftest import free_port

    url = f"ws://127.0.0.1:{free_port()}/ws"
    proc = await asyncio.create_subprocess_exec(
        *LOBBY, url, "--script", "/dev/null", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert f"lobby client: cannot connect to {url}" in err.decode()
