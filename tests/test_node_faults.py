"""Real faults on real processes: a SIGKILLed node (issue 10 item 3) and a node's
Redis link cut while its players leave and are kicked (item 4).

Each test is bounded in seconds: short node timeouts and seat holds, and every
wait is on an event or a store condition, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from lobby.app import LobbyNode
from lobby.store.keys import Keys
from tests.faults import node_procs, tcp_proxy  # noqa: F401  (fixtures)

NODE_TIMEOUT = 1.0
DEAD_NODE_FLAGS = ["--node-timeout-seconds", str(NODE_TIMEOUT),
                   "--sweep-interval-seconds", "0.1"]


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Seconds until the store condition holds (polled; fails after `timeout`)."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < timeout, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def held(redis_url: str, player_id: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        client = aioredis.from_url(redis_url)
        try:
            # Held seats are "SESSION_ID PLAYER_ID" in the bucket's holds (one bucket).
            holds = await client.zrange(f"{Keys('lobby:').bucket_prefix(0)}holds", 0, -1)
            return any(h.decode().endswith(f" {player_id}") for h in holds)
        finally:
            await client.aclose()
    return check


def gone(redis_url: str, player_id: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        client = aioredis.from_url(redis_url)
        try:
            return not await client.exists(Keys("lobby:").player(player_id))
        finally:
            await client.aclose()
    return check


async def listed(player, sid: str) -> dict:
    sessions = (await player.ok("list_sessions"))["sessions"]
    return next(s for s in sessions if s["session_id"] == sid)


async def test_sigkilled_node_member_is_held_then_timed_out(
    make_node, redis_url, node_procs, connect_player  # noqa: F811
) -> None:
    n1 = await make_node(redis_url=redis_url, seat_hold_seconds=2,
                         node_timeout_seconds=NODE_TIMEOUT)
    doomed = await node_procs(redis_url=redis_url, extra=DEAD_NODE_FLAGS)
    host = await connect_player(n1, "host")
    sid = (await host.ok("create_session", max_players=4))["session"]["session_id"]
    guest = await connect_player(doomed, "guest")
    await guest.ok("join_session", session_id=sid)
    await host.event("player_joined")
    loner = await connect_player(doomed, "loner")  # in no session
    assert (await listed(host, sid))["player_count"] == 2

    killed = time.monotonic()
    doomed.kill()
    # Its players' seats go on hold within the node timeout (plus a sweep), and
    # the others are told as for any drop.
    gone_ev = await host.event("player_disconnected", timeout=NODE_TIMEOUT + 3)
    assert time.monotonic() - killed < NODE_TIMEOUT + 3
    assert gone_ev["player_id"] == guest.player_id and gone_ev["hold_until"] is not None
    assert await held(redis_url, guest.player_id)()
    assert (await listed(host, sid))["player_count"] == 2  # held, not gone yet
    left = await host.event("player_left", timeout=10)
    assert (left["player_id"], left["reason"]) == (guest.player_id, "timeout")
    assert left["session"]["connected_players"] == [host.player_id]
    assert (await listed(host, sid))["player_count"] == 1
    # The player records of the dead node's players expire too.
    await until(gone(redis_url, loner.player_id), 5, "loner's record expired")
    back = await connect_player(n1, None)
    assert (await back.ok("hello", resume_token=loner.resume_token))["resumed"] is False


async def test_sigkilled_node_host_migrates(
    make_node, redis_url, node_procs, connect_player  # noqa: F811
) -> None:
    n1 = await make_node(redis_url=redis_url, seat_hold_seconds=1,
                         node_timeout_seconds=NODE_TIMEOUT)
    doomed = await node_procs(redis_url=redis_url, extra=DEAD_NODE_FLAGS)
    host = await connect_player(doomed, "host")
    sid = (await host.ok("create_session", max_players=4))["session"]["session_id"]
    guest = await connect_player(n1, "guest")
    other = await connect_player(n1, "other")
    await guest.ok("join_session", session_id=sid)
    await other.ok("join_session", session_id=sid)

    doomed.kill()
    gone_ev = await guest.event("player_disconnected", timeout=NODE_TIMEOUT + 3)
    assert gone_ev["player_id"] == host.player_id
    left = await guest.event("player_left", timeout=10)
    assert (left["player_id"], left["reason"]) == (host.player_id, "timeout")
    changed = await guest.event("host_changed")
    assert changed["host_id"] == guest.player_id
    assert (await listed(guest, sid))["player_count"] == 2
    # The new host can act: kick, then start.
    await guest.ok("kick_player", player_id=other.player_id)
    assert (await other.event("kicked"))["session_id"] == sid
    await guest.ok("start_session")
    assert (await guest.event("session_started"))["server_endpoint"] == "127.0.0.1:6060"


async def test_redis_link_cut_loses_no_disconnect_and_no_kick(
    make_node, redis_server, redis_url, tcp_proxy, connect_player  # noqa: F811
) -> None:
    proxy = tcp_proxy(redis_server.port)
    n1 = await make_node(redis_url=redis_url, seat_hold_seconds=1)
    n2 = await make_node(redis_url=proxy.url(), seat_hold_seconds=1)
    host = await connect_player(n1, "host")
    sid = (await host.ok("create_session", max_players=4))["session"]["session_id"]
    closer = await connect_player(n2, "closer")
    kicked = await connect_player(n2, "kicked")
    for p in (closer, kicked):
        await p.ok("join_session", session_id=sid)
        await host.event("player_joined")

    proxy.down()  # n2's Redis link: every connection reset, new ones refused
    await closer.close()
    await host.ok("kick_player", player_id=kicked.player_id)
    # n2 could not store the disconnect: it is kept for retry, not dropped.
    start = time.monotonic()
    while not n2.lobby.failed_disconnects:
        assert time.monotonic() - start < 10, "the disconnect never failed"
        await asyncio.sleep(0.02)
    assert kicked.no_event()  # the kick's events could not reach n2
    proxy.restore()

    # After the link returns, n2 reconciles: the kicked player is told...
    ev = await kicked.event("kicked", timeout=10)
    assert ev["session_id"] == sid
    assert kicked.player_id not in ev["session"]["connected_players"]
    # ...and the disconnect lands: the seat hold runs out as for any drop.
    left = await host.event("player_left", timeout=10)
    assert (left["player_id"], left["reason"]) == (kicked.player_id, "kicked")
    left = await host.event("player_left", timeout=10)
    assert (left["player_id"], left["reason"]) == (closer.player_id, "timeout")
    assert left["session"]["connected_players"] == [host.player_id]
    assert not n2.lobby.failed_disconnects
    # The kicked player is free again: no ALREADY_IN_SESSION, no NOT_IN_SESSION limbo.
    await kicked.error("leave_session", "NOT_IN_SESSION")
    own = await kicked.ok("create_session")
    assert own["session"]["host_id"] == kicked.player_id


async def test_node_restarted_at_once_under_the_same_id_drops_the_old_sockets(
    make_node, redis_url, node_procs, connect_player  # noqa: F811
) -> None:
    """A fixed --node-id (a container restarted in place) comes back before its
    heartbeat lapses: its predecessor's players must not stay as ghosts."""
    n1 = await make_node(redis_url=redis_url, seat_hold_seconds=1)
    fixed = ["--node-id", "fixed-node", "--node-timeout-seconds", "30",
             "--seat-hold-seconds", "1"]
    first = await node_procs(redis_url=redis_url, extra=fixed)
    host = await connect_player(n1, "host")
    sid = (await host.ok("create_session", max_players=4))["session"]["session_id"]
    guest = await connect_player(first, "guest")
    await guest.ok("join_session", session_id=sid)
    await host.event("player_joined")
    first.kill()
    await node_procs(redis_url=redis_url, extra=fixed)  # well within its 30 s timeout
    dropped = await host.event("player_disconnected", timeout=5)
    assert dropped["player_id"] == guest.player_id
    left = await host.event("player_left", timeout=5)
    assert (left["player_id"], left["reason"]) == (guest.player_id, "timeout")
    assert (await listed(host, sid))["player_count"] == 1



class Keyspace:
    """The whole Redis keyspace, saved and put back: what a failover to a replica
    that lagged does (the writes it had not replicated are gone, and no event says so)."""

    def __init__(self, redis_url: str) -> None:
        self.client = aioredis.from_url(redis_url)
        self.saved: dict[bytes, tuple[int, bytes]] = {}

    async def save(self) -> None:
        self.saved = {}
        async for key in self.client.scan_iter(count=1000):
            ttl, dump = await self.client.pttl(key), await self.client.dump(key)
            if dump is not None:
                self.saved[key] = (max(ttl, 0), dump)

    async def put_back(self) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.flushdb()
            for key, (ttl, dump) in self.saved.items():
                pipe.restore(key, ttl, dump)
            await pipe.execute()


async def test_a_change_the_store_lost_does_not_wedge_the_player(
    make_node: Callable[..., Awaitable[LobbyNode]],
    connect_player: Callable[..., Awaitable[Any]], redis_url: str,
) -> None:
    """A failover can lose a join or a leave the node already answered and whose
    event the node already heard. The store is the truth: the player's next request
    says so, and the one after it works (it used to be ALREADY_IN_SESSION to every
    join and NOT_IN_SESSION to every leave, for ever)."""
    node = await make_node(redis_url=redis_url)
    host = await connect_player(node, "host")
    guest = await connect_player(node, "guest")
    sid = (await host.ok("create_session", max_players=4))["session"]["session_id"]
    keyspace = Keyspace(redis_url)

    async def members() -> list[str]:
        rec = await node.store.get_session(sid)
        assert rec is not None
        return [m["id"] for m in rec["members"]]

    # The store loses a join.
    await keyspace.save()
    await guest.ok("join_session", session_id=sid)
    assert (await host.event("player_joined"))["player_id"] == guest.player_id
    await keyspace.put_back()
    assert await members() == [host.player_id]
    assert (await guest.request("leave_session"))["error"]["code"] == "NOT_IN_SESSION"
    await guest.ok("join_session", session_id=sid)
    assert (await host.event("player_joined"))["player_id"] == guest.player_id
    assert await members() == [host.player_id, guest.player_id]

    # The store loses a leave.
    await keyspace.save()
    await guest.ok("leave_session")
    assert (await host.event("player_left"))["player_id"] == guest.player_id
    await keyspace.put_back()
    assert (await guest.request("join_session", session_id=sid))["error"]["code"] == (
        "ALREADY_IN_SESSION")
    await guest.ok("leave_session")
    assert (await host.event("player_left"))["player_id"] == guest.player_id
    await guest.ok("join_session", session_id=sid)
    assert await members() == [host.player_id, guest.player_id]
    await keyspace.client.aclose()
