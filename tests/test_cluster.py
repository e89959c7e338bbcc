"""Lobby nodes on a real Redis Cluster and behind a real Sentinel, under faults.

The Redis processes are the suite's own (tests/cluster_fixtures.py); every fault
is real: slots move with keys and all while players join and leave, a master is
SIGKILLed and its replica promoted, a Sentinel master is killed and replaced.
Each test then checks the end state that matters: who is in which room, that
every request was answered, that events still flow.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

from lobby.app import LobbyNode
from lobby.bus import RedisBus
from lobby.recovery import Rebuilder
from lobby.store.keys import Keys
from tests.aws_fixtures import moto_endpoint  # noqa: F401  (fixture)
from tests.cluster_fixtures import RedisClusterProcs, SentinelProcs, keyslot

BUCKETS = 8


def cluster_settings(url: str) -> dict[str, Any]:
    return {"redis_cluster_url": url, "redis_buckets": BUCKETS}


def sentinel_settings(setup: SentinelProcs) -> dict[str, Any]:
    return {"redis_sentinel": setup.sentinels, "redis_sentinel_master": setup.master_name}


async def rooms(n1: LobbyNode, n2: LobbyNode, connect_player: Any, count: int
                ) -> list[tuple[Any, Any, str]]:
    """`count` rooms, each a host on n1 and a guest on n2 who will come and go."""
    out = []
    for i in range(count):
        host = await connect_player(n1, f"host{i}")
        guest = await connect_player(n2, f"guest{i}")
        sid = (await host.ok("create_session", max_players=4))["session"]["session_id"]
        out.append((host, guest, sid))
    return out


def redis_bus(node: LobbyNode) -> RedisBus:
    assert isinstance(node.bus, RedisBus)
    return node.bus


async def bus_restored(nodes: list[LobbyNode], before: list[int], timeout: float = 30) -> None:
    """Every node's bus has subscribed its lost channels again (events published
    in the gap are gone: the node then reconciles, and the next event carries
    the whole session). `before` is each bus's `restores` read before the fault."""
    async with asyncio.timeout(timeout):
        await asyncio.gather(*(redis_bus(n).restored(b)
                               for n, b in zip(nodes, before, strict=True)))


def _subscribers_at_owners(cluster: RedisClusterProcs, channels: list[str]) -> list[int]:
    """Per channel, how many connections its slot's master has subscribed to it."""
    counts = []
    for channel in channels:
        with cluster.client(cluster.owner_of_key(channel).port) as c:
            counts.append(int(c.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1]))
    return counts


async def subscribed_at_owners(cluster: RedisClusterProcs, nodes: list[LobbyNode],
                               session_ids: list[str], timeout: float = 30) -> None:
    """Every node that wants a session's events is subscribed to its channel at the
    master that owns the channel's slot now (Redis counts them). After slots moved,
    a bus may not have read the `sunsubscribe` yet, or be subscribing again: each
    check that fails waits for the next restore of any bus (the counters are read
    before the check, so none is missed), or at most a second: an unsubscribe still
    on its way to Redis ends with no event to wait for."""
    buses = [redis_bus(n) for n in nodes]
    channels = [buses[0].keys.channel(sid) for sid in session_ids]
    async with asyncio.timeout(timeout):
        while True:
            before = [bus.restores for bus in buses]
            wanted = [sum(bus.wants(sid) for bus in buses) for sid in session_ids]
            counts = await asyncio.to_thread(_subscribers_at_owners, cluster, channels)
            if counts == wanted:
                return
            waits = [asyncio.ensure_future(redis_bus(n).restored(b))
                     for n, b in zip(nodes, before, strict=True)]
            try:
                await asyncio.wait(waits, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()


async def any_run_ends(rebuilders: list[Rebuilder]) -> None:
    """Until the next rebuild run (after this call) ends on any of them."""
    before = [r.runs for r in rebuilders]
    waits = [asyncio.ensure_future(r.finished(b)) for r, b in zip(rebuilders, before,
                                                                  strict=True)]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    assert [r.runs for r in rebuilders] != before, "woken with no run ended"


class Replies(list[dict[str, Any]]):
    """The churn's replies, with a wait for how many have come."""

    def __init__(self) -> None:
        super().__init__()
        self._grew = asyncio.Condition()
        self.lost = 0  # changes the store no longer had (see churn)

    async def add(self, reply: dict[str, Any]) -> None:
        self.append(reply)
        async with self._grew:
            self._grew.notify_all()

    async def reach(self, n: int, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout), self._grew:
            await self._grew.wait_for(lambda: len(self) >= n)


async def churn(guest: Any, sid: str, stop: asyncio.Event, replies: Replies) -> bool:
    """Join and leave until told to stop; True if the guest ends in the room."""
    inside = False
    while not stop.is_set():
        reply = await guest.request("leave_session" if inside else "join_session",
                                    **({} if inside else {"session_id": sid}))
        await replies.add(reply)
        if reply["ok"]:
            inside = not inside
        elif reply["error"]["code"] == ("NOT_IN_SESSION" if inside else "ALREADY_IN_SESSION"):
            # The store says otherwise: a failover lost the last change (replication
            # is asynchronous). The guest goes on from the store's state; the test
            # counts these.
            inside = not inside
            replies.lost += 1
    return inside


async def after(player: Any, etype: str, version: int, timeout: float = 10) -> dict[str, Any]:
    """The player's next `etype` event of a change after `version` (older pushes of
    the churn are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            ev = await player.event(etype, timeout=timeout)
            if ev["session"]["version"] > version:
                return ev


async def rooms_as_heard(node: LobbyNode, pairs: list[tuple[Any, Any, str]], inside: list[bool]
                         ) -> None:
    """The store and the players agree on who is in which room, and events still
    reach the other node: each host sees its guest's next move."""
    for (host, guest, sid), is_in in zip(pairs, inside, strict=True):
        rec = await node.store.get_session(sid)
        assert rec is not None
        members = [m["id"] for m in rec["members"]]
        assert members == ([host.player_id, guest.player_id] if is_in else [host.player_id])
        await guest.ok("leave_session" if is_in else "join_session",
                       **({} if is_in else {"session_id": sid}))
        ev = await after(host, "player_left" if is_in else "player_joined", rec["v"])
        assert ev["player_id"] == guest.player_id


async def test_reshard_during_traffic_fails_no_request(
    cluster_url: str, redis_cluster: RedisClusterProcs, make_node: Any, connect_player: Any
) -> None:
    n1 = await make_node(**cluster_settings(cluster_url))
    n2 = await make_node(**cluster_settings(cluster_url))
    keys = Keys("lobby:", BUCKETS)
    pairs = await rooms(n1, n2, connect_player, 8)
    stop = asyncio.Event()
    replies = Replies()
    workers = [asyncio.create_task(churn(g, sid, stop, replies)) for _, g, sid in pairs]

    # Every bucket's slot goes to another master and back, keys and all, while the
    # guests come and go; then a redis-cli reshard of a range of slots.
    slots = sorted({keyslot(keys.bucket_prefix(k)) for k in range(BUCKETS)})
    masters = [m.port for m in redis_cluster.masters()]
    home = {s: redis_cluster.owner(s).port for s in slots}
    for s in slots:
        away = random.choice([p for p in masters if p != home[s]])
        await asyncio.to_thread(redis_cluster.move_slots, [s], away)
    await asyncio.to_thread(redis_cluster.reshard, masters[0], masters[1], 300)
    for s in slots:
        await asyncio.to_thread(redis_cluster.move_slots, [s], home[s])
    moved_during = len(replies)
    await replies.reach(moved_during + 40)  # and traffic goes on afterwards
    stop.set()
    inside = await asyncio.gather(*workers)

    assert moved_during > 50, "the traffic must have run during the moves"
    failed = [r for r in replies if not r["ok"]]
    assert failed == [], failed[:5]
    assert replies.lost == 0
    # Events published while a bus was subscribing again are gone (the node then
    # reconciles); the next ones must arrive.
    await subscribed_at_owners(redis_cluster, [n1, n2], [sid for *_, sid in pairs])
    await rooms_as_heard(n1, pairs, inside)


async def test_a_master_dies_and_its_replica_takes_over(
    make_redis_cluster: Any, make_node: Any, connect_player: Any
) -> None:
    cluster: RedisClusterProcs = await asyncio.to_thread(make_redis_cluster, replicas=1)
    url = cluster.url
    n1 = await make_node(**cluster_settings(url))
    n2 = await make_node(**cluster_settings(url))
    keys = Keys("lobby:", BUCKETS)
    pairs = await rooms(n1, n2, connect_player, 8)
    for host, guest, sid in pairs:
        await guest.ok("join_session", session_id=sid)
        assert (await host.event("player_joined"))["player_id"] == guest.player_id
    # Replication is asynchronous: wait until the replicas have what the masters hold.
    for m in cluster.masters():
        with cluster.client(m.port) as c:
            c.execute_command("WAIT", 1, 5000)

    # The master of the first room's bucket dies.
    victim = cluster.owner(keyslot(keys.of_session(pairs[0][2]))).port
    before = [redis_bus(n).restores for n in (n1, n2)]
    await asyncio.to_thread(cluster.kill_master, victim)
    await bus_restored([n1, n2], before)

    # Every room is still there with both players, and every player can go on:
    # the guests leave and come back, the hosts see it on the other node.
    for host, guest, sid in pairs:
        rec = await n1.store.get_session(sid)
        assert rec is not None and [m["id"] for m in rec["members"]] == [
            host.player_id, guest.player_id]
        reply = await guest.request("leave_session")
        for _ in range(50):  # the first calls may meet the old master's last moments
            if reply["ok"]:
                break
            await asyncio.sleep(0.2)
            reply = await guest.request("leave_session")
        assert reply["ok"], reply
        assert (await host.event("player_left", timeout=10))["player_id"] == guest.player_id
        await guest.ok("join_session", session_id=sid)
        assert (await host.event("player_joined", timeout=10))["player_id"] == guest.player_id


async def test_no_event_reaches_a_node_without_members(
    cluster_url: str, make_node: Any, connect_player: Any
) -> None:
    n1 = await make_node(**cluster_settings(cluster_url))
    n2 = await make_node(**cluster_settings(cluster_url))
    mine = await rooms(n1, n1, connect_player, 4)  # rooms with players on n1 only
    theirs = await rooms(n2, n2, connect_player, 1)
    before = n2.hub.events_in
    for host, guest, sid in mine:
        await guest.ok("join_session", session_id=sid)
        await guest.ok("send_chat", text="hi")
        await guest.ok("leave_session")
        assert (await host.event("player_left"))["player_id"] == guest.player_id
    assert n2.hub.events_in == before
    # n2 does receive the events of its own room.
    host, guest, sid = theirs[0]
    await guest.ok("join_session", session_id=sid)
    await host.event("player_joined")
    assert n2.hub.events_in > before


async def test_sentinel_failover_during_traffic_nodes_follow(
    make_redis_sentinel: Any, make_node: Any, connect_player: Any
) -> None:
    setup: SentinelProcs = await asyncio.to_thread(make_redis_sentinel)
    n1 = await make_node(**sentinel_settings(setup))
    n2 = await make_node(**sentinel_settings(setup))
    pairs = await rooms(n1, n2, connect_player, 4)
    stop = asyncio.Event()
    replies = Replies()
    workers = [asyncio.create_task(churn(g, sid, stop, replies)) for _, g, sid in pairs]
    await replies.reach(40)
    with setup.client(setup.master_port()) as c:
        c.execute_command("WAIT", 1, 5000)
    old = setup.master_port()
    before = [redis_bus(n).restores for n in (n1, n2)]
    new = await asyncio.to_thread(setup.failover)
    assert new != old
    await bus_restored([n1, n2], before)
    mark = len(replies)
    await replies.reach(mark + 40)  # traffic goes on, on the new master
    stop.set()
    inside = await asyncio.gather(*workers)
    # Writes the old master took but had not replicated are lost (the README says
    # so): at most the last change of each guest; after that every request works.
    codes = [r["error"]["code"] for r in replies if not r["ok"]]
    assert replies.lost <= len(pairs), (replies.lost, codes[:20])
    late = replies[mark + 20:]
    refused = [r for r in late if not r["ok"]]
    assert len(refused) <= replies.lost, refused[:3]
    assert all(r["ok"] for r in late[-len(pairs) * 4:]), refused[:3]
    await rooms_as_heard(n2, pairs, inside)


async def test_a_shard_that_comes_back_empty_is_rebuilt_alone(
    make_redis_cluster: Any, moto_endpoint: str, make_node: Any, connect_player: Any,  # noqa: F811
) -> None:
    cluster: RedisClusterProcs = await asyncio.to_thread(make_redis_cluster)
    table = f"lobby-cluster-{uuid.uuid4().hex[:8]}"
    settings = {**cluster_settings(cluster.url), "dynamodb": True, "dynamodb_table": table,
                "dynamodb_endpoint_url": moto_endpoint}
    n1 = await make_node(**settings)
    n2 = await make_node(**settings)
    keys = Keys("lobby:", BUCKETS)
    pairs = await rooms(n1, n2, connect_player, 12)
    for host, guest, sid in pairs:
        await guest.ok("join_session", session_id=sid)
        await host.event("player_joined")
    for n in (n1, n2):
        assert n.persistence is not None and await n.persistence.flush(10)
        await n.check_store()
    # One master loses everything (a restart without persistence).
    victim = cluster.owner(keyslot(keys.of_session(pairs[0][2]))).port
    lost = {sid for _, _, sid in pairs if cluster.owner(keyslot(keys.of_session(sid))).port
            == victim}
    kept = {sid: await n1.store.get_session(sid) for _, _, sid in pairs if sid not in lost}
    assert lost and kept, "the rooms must be spread over more than one master"
    await asyncio.to_thread(cluster.flush_shard, victim)

    # The emptied buckets are rebuilt, each by the node that takes its lease (both
    # nodes may share them): the rebuilders' counts say when all are back, looked
    # at again as each run ends on either node.
    rebuilders = [n1.rebuilder, n2.rebuilder]
    def restored() -> int:
        return sum(r.stats.restored for r in rebuilders)
    async with asyncio.timeout(60):
        while restored() < len(lost):
            await any_run_ends(rebuilders)
    for n in (n1, n2):
        await n.check_store()
    assert restored() == len(lost)  # only the lost buckets' sessions were restored
    for n in (n1, n2):
        await n.check_store()
    for host, guest, sid in pairs:
        rec = await n1.store.get_session(sid)
        assert rec is not None and [m["id"] for m in rec["members"]] == [
            host.player_id, guest.player_id]
        if sid in kept:
            assert rec == kept[sid]  # untouched: not rewritten, not held
    # The players of a rebuilt room, still connected, act on as before.
    for host, guest, _ in pairs:
        await guest.ok("leave_session")
        assert (await host.event("player_left", timeout=10))["player_id"] == guest.player_id
