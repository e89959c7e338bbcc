"""Several nodes on one Redis serve the same sessions (the lifecycle tests run on
one Redis, on a Redis Cluster and behind Sentinel: the `shared` fixture)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from lobby.config import StartupError
from lobby.errors import ErrorCode, LobbyError
from lobby.store.keys import Keys
from lobby.store.redis import RedisStore


@pytest.fixture(params=["redis", "cluster", "sentinel"])
def shared(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The settings of nodes sharing one store, for each Redis deployment."""
    if request.param == "cluster":
        return {"redis_cluster_url": request.getfixturevalue("cluster_url"),
                "redis_buckets": 8}
    if request.param == "sentinel":
        setup = request.getfixturevalue("sentinel_target")
        return {"redis_sentinel": setup.sentinels, "redis_sentinel_master": setup.master_name}
    return {"redis_url": request.getfixturevalue("redis_url")}


async def test_cross_node_pushes(make_node, shared, connect_player) -> None:
    n1 = await make_node(**shared)
    n2 = await make_node(**shared)
    host = await connect_player(n1, "host")
    sid = (await host.ok("create_session", max_players=4))["session"]["session_id"]

    guest = await connect_player(n2, "guest")
    assert [s["session_id"] for s in (await guest.ok("list_sessions"))["sessions"]] == [sid]
    await guest.ok("join_session", session_id=sid)
    joined = await host.event("player_joined")
    assert joined["player_id"] == guest.player_id

    third = await connect_player(n2, "third")
    await third.ok("join_session", session_id=sid)
    for p in (host, guest):
        assert (await p.event("player_joined"))["player_id"] == third.player_id

    await host.ok("start_session")
    for p in (host, guest, third):
        ev = await p.event("session_started")
        assert ev["server_endpoint"] == "127.0.0.1:6060"


async def test_nodes_subscribe_only_to_their_sessions(make_node, redis_url, connect_player
                                                      ) -> None:
    n1 = await make_node(redis_url=redis_url)
    n2 = await make_node(redis_url=redis_url)
    a = await connect_player(n1, "a")
    b = await connect_player(n2, "b")
    sid_a = (await a.ok("create_session"))["session"]["session_id"]
    sid_b = (await b.ok("create_session"))["session"]["session_id"]
    client = aioredis.from_url(redis_url)
    channels = {c.decode() for c in await client.pubsub_shardchannels("lobby:*:ev:*")}
    await client.aclose()
    keys = Keys("lobby:")
    assert channels == {keys.channel(sid_a), keys.channel(sid_b)}
    assert n1.hub.session_count == 1 and n2.hub.session_count == 1
    # Leaving drops the subscription (the node no longer receives that session).
    await a.ok("leave_session")
    assert n1.hub.session_count == 0


async def test_forty_racers_for_seven_seats(make_node, shared, connect_player) -> None:
    n1 = await make_node(**shared)
    n2 = await make_node(**shared)
    host = await connect_player(n1, "host")
    sid = (await host.ok("create_session", max_players=8))["session"]["session_id"]
    racers = [await connect_player(n1 if i % 2 else n2, f"r{i}") for i in range(40)]
    replies = await asyncio.gather(*(r.request("join_session", session_id=sid) for r in racers))
    outcome = Counter("ok" if r["ok"] else r["error"]["code"] for r in replies)
    assert outcome == {"ok": 7, "SESSION_FULL": 33}
    seen = []
    for _ in range(7):
        seen.append((await host.event("player_joined"))["player_id"])
    winners = {r.player_id for r, rep in zip(racers, replies, strict=True) if rep["ok"]}
    assert set(seen) == winners
    listing = await racers[0].ok("list_sessions")
    assert listing["sessions"] == []
    session = (await racers[0].request("join_session", session_id=sid))
    assert session["ok"] is False


async def test_two_stores_start_once(redis_url) -> None:
    """Two nodes' stores race WAITING -> CONNECTING on separate connections."""
    c1, c2 = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    s1, s2 = RedisStore(c1), RedisStore(c2)
    for _ in range(20):
        await s1.new_player("host", "h", "t", "n1.1", 1)
        await s1.create_session("host", "race", "r", 4, None, 1)
        results = await asyncio.gather(
            s1.begin_start("host", 2), s2.begin_start("host", 2), return_exceptions=True
        )
        started = [r for r in results if isinstance(r, dict)]
        refused = [r for r in results if isinstance(r, LobbyError)]
        assert len(started) == 1 and started[0]["state"] == "CONNECTING"
        assert len(refused) == 1 and refused[0].code == ErrorCode.SESSION_NOT_WAITING
        await s1.leave_session("host", 3)
    await c1.aclose()
    await c2.aclose()


async def test_resume_on_another_node_replaces_old_socket(make_node, shared, connect_player
                                                          ) -> None:
    n1 = await make_node(**shared)
    n2 = await make_node(**shared)
    host = await connect_player(n1, "host")
    guest = await connect_player(n1, "guest")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid)

    again = await connect_player(n2, None)
    reply = await again.ok("hello", resume_token=guest.resume_token)
    assert reply["resumed"] is True and reply["player_id"] == guest.player_id
    assert reply["session"]["session_id"] == sid
    await asyncio.wait_for(guest.ws.wait_closed(), 5)
    assert guest.ws.close_code == 4001

    # Events now reach the new socket on node 2, and only it.
    late = await connect_player(n1, "late")
    await late.ok("join_session", session_id=sid)
    assert (await again.event("player_joined"))["player_id"] == late.player_id
    await host.event("player_joined")


async def _channels(redis_url: str) -> set[str]:
    client = aioredis.from_url(redis_url)
    try:
        return {c.decode() for c in await client.pubsub_shardchannels("lobby:*:ev:*")}
    finally:
        await client.aclose()


async def _subscribe_calls(redis_url: str) -> int:
    client = aioredis.from_url(redis_url)
    try:
        stats = await client.info("commandstats")
        return int(stats.get("cmdstat_ssubscribe", {}).get("calls", 0))
    finally:
        await client.aclose()


async def test_subscription_lingers_for_room_hoppers(make_node, redis_url, connect_player
                                                     ) -> None:
    n1 = await make_node(redis_url=redis_url)
    n2 = await make_node(redis_url=redis_url)
    n1.hub.linger_seconds = n2.hub.linger_seconds = 0.3
    host = await connect_player(n1, "host")
    hopper = await connect_player(n2, "hopper")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    await hopper.ok("join_session", session_id=sid)
    subscribes = await _subscribe_calls(redis_url)
    assert subscribes > 0  # the nodes subscribe with SSUBSCRIBE (counted here)
    assert Keys("lobby:").channel(sid) in await _channels(redis_url)
    await hopper.ok("leave_session")
    await hopper.ok("join_session", session_id=sid)
    # The hop back within the grace period cost no SSUBSCRIBE (nor SUNSUBSCRIBE)...
    assert await _subscribe_calls(redis_url) == subscribes
    second = await connect_player(n1, "second")
    await second.ok("join_session", session_id=sid)
    # ...and events still reach the hopper on node 2.
    assert (await hopper.event("player_joined"))["player_id"] == second.player_id
    await hopper.ok("leave_session")
    await host.ok("leave_session")
    await second.ok("leave_session")
    # Once nobody local is left, every node lets go of the channel after the grace.
    # Redis's own subscription list is polled: there is no event to await for it.
    async with asyncio.timeout(10):
        while Keys("lobby:").channel(sid) in await _channels(redis_url):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_unsubscribe_then_resubscribe_keeps_order(make_node, redis_url, connect_player
                                                       ) -> None:
    """The last local member goes and a new one arrives at once: still subscribed."""
    n1 = await make_node(redis_url=redis_url)
    n2 = await make_node(redis_url=redis_url)
    n2.hub.linger_seconds = 0  # unsubscribe at once: the racy path
    host = await connect_player(n1, "host")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    a = await connect_player(n2, "a")
    b = await connect_player(n2, "b")
    for _ in range(10):
        await a.ok("join_session", session_id=sid)
        # b's join is on the wire before a's leave reply: unsubscribe and subscribe
        # are asked back to back on node 2.
        leave, join = await asyncio.gather(a.request("leave_session"),
                                           b.request("join_session", session_id=sid))
        assert leave["ok"] and join["ok"]
        newcomer = await connect_player(n1, "c")
        await newcomer.ok("join_session", session_id=sid)
        assert (await b.event("player_joined"))["player_id"] == newcomer.player_id
        await newcomer.ok("leave_session")
        await b.ok("leave_session")


async def test_nodes_must_agree_on_the_buckets(make_node, redis_url) -> None:
    """Which bucket holds a session depends on their number: a node started with
    another number than the Redis holds would look sessions up in the wrong place."""
    await make_node(redis_url=redis_url, redis_buckets=4)
    with pytest.raises(StartupError) as info:
        await make_node(redis_url=redis_url, redis_buckets=6)
    assert "--redis-buckets 4" in str(info.value) and info.value.exit_code == 2


async def test_a_late_player_left_of_a_hop_keeps_the_new_membership(
    make_node, redis_url, connect_player
) -> None:
    """A hop (leave, join again) whose leave event reaches the node after the new
    join (the replies came first): that event is the old membership's, and the
    player must go on getting the room's events."""
    n1 = await make_node(redis_url=redis_url)
    n2 = await make_node(redis_url=redis_url)
    host = await connect_player(n1, "host")
    hopper = await connect_player(n2, "hopper")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    await hopper.ok("join_session", session_id=sid)
    # What the bus carries for the session, heard by the test itself.
    redis = aioredis.from_url(redis_url)
    ps = redis.pubsub()
    await ps.ssubscribe(Keys("lobby:").channel(sid))
    try:
        assert (await ps.get_message(timeout=5))["type"] == "ssubscribe"
        await hopper.ok("leave_session")
        left = (await ps.get_message(timeout=5))["data"]
        assert b'"player_left"' in left
        await hopper.ok("join_session", session_id=sid)
        n2.hub.on_message(left)  # the leave's event, late
        second = await connect_player(n1, "second")
        await second.ok("join_session", session_id=sid)
        assert (await hopper.event("player_joined"))["player_id"] == second.player_id
    finally:
        await ps.aclose()
        await redis.aclose()


async def test_events_of_a_node_without_the_members_view_reach_players_alike(
    make_node, redis_url, connect_player
) -> None:
    """During a rolling restart the bus carries events of the previous release,
    which have the record but not the members' view of the session (`p`): a node
    builds the view itself and sends its players the same event."""
    n1 = await make_node(redis_url=redis_url)
    host = await connect_player(n1, "host")
    guest = await connect_player(n1, "guest")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    redis = aioredis.from_url(redis_url)
    ps = redis.pubsub()
    await ps.ssubscribe(Keys("lobby:").channel(sid))
    try:
        assert (await ps.get_message(timeout=5))["type"] == "ssubscribe"
        await guest.ok("join_session", session_id=sid)
        raw = (await ps.get_message(timeout=5))["data"]
        current = await host.event("player_joined")
        old = json.loads(raw)
        assert old.pop("p") == current["session"]  # the view the node forwarded
        del old["pl"], old["u"]
        n1.hub.on_message(json.dumps(old).encode())  # as the previous release sends it
        assert await host.event("player_joined") == current
    finally:
        await ps.aclose()
        await redis.aclose()
