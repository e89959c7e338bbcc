"""Password guessing: limits kept in the store hold across sockets and nodes, and
the scrypt queue is bounded so that nobody waits behind an attacker's guesses."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from websockets.asyncio.client import connect

from lobby.app import LobbyNode
from tests.conftest import Player, ws_url


async def _player(node: LobbyNode, source: str, name: str) -> Player:
    player = Player(await connect(ws_url(node), compression=None, local_addr=(source, 0)))
    await player.hello(name)
    return player


async def _players(nodes: list[LobbyNode], source: str, count: int) -> list[Player]:
    gate = asyncio.Semaphore(8)  # within --max-handshakes-per-ip

    async def one(i: int) -> Player:
        async with gate:
            return await _player(nodes[i % len(nodes)], source, f"guesser{i}")

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def test_brute_force_from_200_sockets_on_2_nodes(make_node, redis_url: str) -> None:
    # 100 attackers from each address over the two nodes, and one late socket:
    # --max-sockets-per-ip counts lobby-wide.
    nodes = [await make_node(redis_url=redis_url, max_sockets_per_ip=101) for _ in range(2)]
    host = await _player(nodes[0], "127.0.0.2", "host")
    sid = (await host.ok("create_session", password="correct horse"))["session"]["session_id"]
    attackers = (await _players(nodes, "127.0.1.1", 100)
                 + await _players(nodes, "127.0.1.2", 100))
    friend = await _player(nodes[1], "127.0.0.3", "friend")
    bystander = await _player(nodes[0], "127.0.0.4", "bystander")
    codes: dict[str, int] = {}
    under_way = asyncio.Event()

    async def guess(player: Player, i: int) -> None:
        for attempt in range(5):
            reply = await player.request("join_session", session_id=sid,
                                         password=f"guess-{i}-{attempt}")
            code = reply["error"]["code"]
            codes[code] = codes.get(code, 0) + 1
            if codes.get("RATE_LIMITED", 0) >= 300:
                under_way.set()

    attack = asyncio.gather(*(guess(p, i) for i, p in enumerate(attackers)))
    # The attack is under way (the session's guesses are used up) when the friend comes.
    await asyncio.wait_for(under_way.wait(), 30)
    started = time.monotonic()
    joined = await friend.ok("join_session", session_id=sid, password="correct horse")
    join_took = time.monotonic() - started
    started = time.monotonic()
    await bystander.ok("list_sessions")
    await bystander.ok("ping")
    bystander_took = time.monotonic() - started
    await attack
    wrong = sum(n.lobby.password_checks for n in nodes) - 1  # the friend's was right
    print(f"verified wrong guesses {wrong}, replies {codes}, friend joined in "
          f"{join_took * 1000:.0f} ms, bystander {bystander_took * 1000:.0f} ms")
    assert joined["session"]["player_count"] == 2
    assert join_took < 1.0, join_took
    assert bystander_took < 0.5, bystander_took
    # 10 a minute for the session (--password-guesses-per-session), and each
    # attacking address that had not guessed yet when the lock began gets one.
    assert wrong <= 10 + 2, wrong
    assert codes["WRONG_PASSWORD"] == wrong
    assert codes["RATE_LIMITED"] == 1000 - wrong
    # Still locked for the attackers, on either node, whatever socket they use.
    late = await _player(nodes[1], "127.0.1.1", "late")
    reply = await late.error("join_session", "RATE_LIMITED", session_id=sid, password="x")
    assert "this session" in reply["error"]["message"]
    for player in [host, friend, bystander, late, *attackers]:
        await player.close()


async def test_scrypt_queue_is_bounded(make_node, connect_player) -> None:
    node = await make_node(password_queue=4, password_guesses_per_address=1000,
                           max_sockets_per_ip=100)
    host = await connect_player(node, "host")
    sid = (await host.ok("create_session", password="pw"))["session"]["session_id"]
    creators = [await connect_player(node, f"c{i}") for i in range(40)]

    async def create(player: Player) -> tuple[str, float]:
        started = time.monotonic()
        reply = await player.request("create_session", password="secret")
        return ("ok" if reply["ok"] else reply["error"]["code"]), time.monotonic() - started

    flood = asyncio.gather(*(create(p) for p in creators))
    await asyncio.sleep(0)  # the creates are on their way
    guest = await connect_player(node, "guest")
    started = time.monotonic()
    tries = 0
    while True:  # a client retries RATE_LIMITED after a moment
        tries += 1
        reply: dict[str, Any] = await guest.request("join_session", session_id=sid,
                                                    password="pw")
        if reply["ok"]:
            break
        assert reply["error"]["code"] == "RATE_LIMITED", reply
        assert "busy" in reply["error"]["message"]
        await asyncio.sleep(0.05)
    guest_took = time.monotonic() - started
    results = await flood
    busy = [took for code, took in results if code == "RATE_LIMITED"]
    print(f"guest joined in {guest_took * 1000:.0f} ms after {tries} tries; "
          f"{len(busy)} of 40 creates refused busy")
    assert busy, "the queue never filled"
    assert all(code in ("ok", "RATE_LIMITED") for code, _ in results)
    # Refused at once, not after a wait in the queue.
    assert max(busy) < 1.0, max(busy)
    assert guest_took < 3.0, guest_took


async def test_one_address_cannot_fill_the_scrypt_queue(make_node) -> None:
    """An address holds at most a quarter of --password-queue: while 20 sockets of
    one address keep it busy with password creates, a player from another address
    gets in with the right password at the first try."""
    node = await make_node(max_sockets_per_ip=100)
    host = await _player(node, "127.0.0.2", "host")
    sid = (await host.ok("create_session", password="correct horse"))["session"]["session_id"]
    flooders = [await _player(node, "127.0.1.1", f"flood{i}") for i in range(20)]
    friend = await _player(node, "127.0.0.3", "friend")
    busy = 0
    flooding = asyncio.Event()
    done = False

    async def flood(player: Player) -> None:
        nonlocal busy
        while not done:
            reply = await player.request("create_session", password="secret")
            if reply["ok"]:
                await player.ok("leave_session")
                continue
            assert reply["error"]["code"] == "RATE_LIMITED", reply
            assert "busy" in reply["error"]["message"]
            busy += 1
            if busy >= 50:
                flooding.set()

    flood_all = asyncio.gather(*(flood(p) for p in flooders))
    try:
        # The flooders' address has its share of the queue full, and keeps it full.
        await asyncio.wait_for(flooding.wait(), 20)
        joined = await friend.ok("join_session", session_id=sid, password="correct horse")
        assert joined["session"]["player_count"] == 2
    finally:
        done = True
        await flood_all
    for player in [host, friend, *flooders]:
        await player.close()


async def test_who_is_in_a_password_room_is_for_its_members(node: LobbyNode,
                                                            connect_player) -> None:
    host = await connect_player(node, "host")
    created = (await host.ok("create_session", password="pw"))["session"]
    sid, host_id = created["session_id"], created["host_id"]
    guest = await connect_player(node, "guest")
    await guest.ok("join_session", session_id=sid, password="pw")
    other = await connect_player(node, "other")
    open_sid = (await other.ok("create_session"))["session"]["session_id"]
    stranger = await connect_player(node, "stranger")

    def listed(reply: dict[str, Any], session_id: str) -> dict[str, Any]:
        return next(s for s in reply["sessions"] if s["session_id"] == session_id)

    seen = listed(await stranger.ok("list_sessions"), sid)
    # The host too is a member (with --auth jwt its id is the backend's sub).
    assert seen["host_id"] is None
    assert seen["players"] == [] and seen["connected_players"] == []
    assert seen["player_count"] == 2 and seen["has_password"] is True
    assert [p["name"] for p in listed(await stranger.ok("list_sessions"), open_sid)["players"]] \
        == ["other"]
    assert listed(await stranger.ok("list_sessions"), open_sid)["host_id"] is not None
    inside = listed(await guest.ok("list_sessions"), sid)
    assert [p["name"] for p in inside["players"]] == ["host", "guest"]
    assert inside["host_id"] == host_id


async def test_join_code_guesses_limited_per_address_across_nodes(make_node,
                                                                  redis_url: str) -> None:
    nodes = [await make_node(redis_url=redis_url) for _ in range(2)]
    host = await _player(nodes[0], "127.0.0.2", "host")
    code = (await host.ok("create_session", visibility="unlisted"))["session"]["join_code"]
    guessers = await _players(nodes, "127.0.1.3", 10)
    replies = await asyncio.gather(*(
        g.request("join_session", join_code=f"ZZZ{i}{k}A") for i, g in enumerate(guessers)
        for k in range(5)))
    codes = [r["error"]["code"] for r in replies]
    # 20 a minute from one address (--password-guesses-per-address), whatever the sockets
    # and nodes; every one past it refused before the lookup.
    assert codes.count("SESSION_NOT_FOUND") == 20, codes
    assert codes.count("RATE_LIMITED") == 30
    friend = await _player(nodes[1], "127.0.0.4", "friend")
    joined = await friend.ok("join_session", join_code=code)
    assert joined["session"]["player_count"] == 2
    for player in [host, friend, *guessers]:
        await player.close()
