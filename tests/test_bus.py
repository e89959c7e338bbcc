"""The Redis bus on sharded pub/sub: one Redis, Sentinel and a real Redis Cluster.

Every deployment is real processes the test starts itself. Messages are
published with SPUBLISH from another client, as the store's scripts do.
"Nothing arrived" is proven without sleeping: a marker published afterwards
on a channel of the same slot (so on the same connection, behind it) arrives,
and the bus' own count of messages read off the wire says what came.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from lobby.bus import RedisBus
from lobby.store.keys import Keys
from tests.cluster_fixtures import RedisClusterProcs, SentinelProcs, keyslot
from tests.conftest import RedisServer
from tests.faults import TcpProxy, tcp_proxy  # noqa: F401

BUCKETS = 16  # sessions spread over slots, so over every master of a cluster
EVENT_WAIT = 10.0


# real deployments (tests/cluster_fixtures.py) -------------------------------------
def cluster_client(procs: RedisClusterProcs) -> RedisCluster:
    return RedisCluster(startup_nodes=[AsyncClusterNode(h, p) for h, p in procs.startup_nodes()])


def sentinel_client(procs: SentinelProcs) -> aioredis.Redis:
    return Sentinel(procs.sentinel_addresses()).master_for(procs.master_name)


# the node side ------------------------------------------------------------------
class Node:
    """A bus as a node holds it: its handler counts and queues what arrives."""

    def __init__(self, client: Any, keys: Keys, name: str) -> None:
        self.bus = RedisBus(client, keys)
        self.keys = keys
        self.name = name
        self.got: asyncio.Queue[bytes] = asyncio.Queue()
        self.restored = asyncio.Event()
        self.bus.on_restored = self.restored.set

    async def start(self) -> Node:
        await self.bus.start(self.name, lambda raw: self.got.put_nowait(bytes(raw)))
        return self

    async def next(self, timeout: float = EVENT_WAIT) -> bytes:
        return await asyncio.wait_for(self.got.get(), timeout)

    def pending(self) -> list[bytes]:
        out = []
        while not self.got.empty():
            out.append(self.got.get_nowait())
        return out


class Publisher:
    """Another client SPUBLISHing, as the store's scripts do."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    async def session(self, session_id: str, text: str) -> int:
        return int(await self.client.execute_command(
            "SPUBLISH", self.keys.channel(session_id), text))

    async def node(self, node_id: str, text: str) -> int:
        return int(await self.client.execute_command(
            "SPUBLISH", self.keys.node_channel(node_id), text))


def same_bucket(keys: Keys, n: int, bucket: int = 0) -> list[str]:
    """n session ids of one bucket (so one slot, so one connection)."""
    out: list[str] = []
    i = 0
    while len(out) < n:
        sid = f"s{i}"
        if keys.bucket(sid) == bucket:
            out.append(sid)
        i += 1
    return out


def one_per_bucket(keys: Keys) -> list[str]:
    return [same_bucket(keys, 1, k)[0] for k in range(keys.buckets)]


@pytest.fixture(params=["single", "sentinel", "cluster"])
async def deployment(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, Any]]:
    """(a factory of the clients a node would hold, a publisher's client), on the
    suite's shared Redis, Sentinel setup or cluster (none of them is failed over)."""
    clients: list[Any] = []
    if request.param == "single":
        server: RedisServer = request.getfixturevalue("redis_server")

        def connect() -> Any:
            return aioredis.Redis(port=server.port)
    elif request.param == "sentinel":
        setup: SentinelProcs = request.getfixturevalue("redis_sentinel")

        def connect() -> Any:
            return sentinel_client(setup)
    else:
        procs: RedisClusterProcs = request.getfixturevalue("redis_cluster")

        def connect() -> Any:
            return cluster_client(procs)

    def make() -> Any:
        clients.append(connect())
        return clients[-1]
    yield make, make()
    for c in clients:
        await c.aclose()


@pytest.fixture
async def nodes(deployment: tuple[Any, Any]) -> AsyncIterator[Any]:
    make, _ = deployment
    started: list[Node] = []

    async def factory(name: str) -> Node:
        node = await Node(make(), Keys(buckets=BUCKETS), name).start()
        started.append(node)
        return node
    yield factory
    for node in started:
        await node.bus.close()


@pytest.fixture
def publisher(deployment: tuple[Any, Any]) -> Publisher:
    return Publisher(deployment[1], Keys(buckets=BUCKETS))


# the contract on every deployment -----------------------------------------------
async def test_subscribed_events_arrive_from_every_slot(nodes: Any, publisher: Publisher
                                                        ) -> None:
    node = await nodes("n1")
    sessions = one_per_bucket(node.keys)
    for sid in sessions:
        await node.bus.subscribe(sid)
    # subscribe() returned: what is published now is delivered, on every master.
    for sid in sessions:
        assert await publisher.session(sid, f"ev {sid}") == 1
    got = {await node.next() for _ in sessions}
    assert got == {f"ev {sid}".encode() for sid in sessions}
    assert await publisher.node("n1", "replaced") == 1  # the node channel, always on
    assert await node.next() == b"replaced"


async def test_unsubscribe_stops_delivery(nodes: Any, publisher: Publisher) -> None:
    node = await nodes("n1")
    gone, marker = same_bucket(node.keys, 2)
    await node.bus.subscribe(gone)
    await node.bus.subscribe(marker)
    node.bus.unsubscribe(gone)
    # Same slot, same connection, commands in order: once the marker's second
    # SSUBSCRIBE is confirmed, the SUNSUBSCRIBE before it is done.
    await node.bus.subscribe(marker)
    assert await publisher.session(gone, "late") == 0
    assert await publisher.session(marker, "marker") == 1
    assert await node.next() == b"marker"
    assert node.pending() == []
    assert node.bus.received == 1


async def test_subscribe_and_unsubscribe_keep_call_order(nodes: Any, publisher: Publisher
                                                         ) -> None:
    node = await nodes("n1")
    sid, marker = same_bucket(node.keys, 2)
    # The last local member leaves and a new one joins at once: subscribed.
    await node.bus.subscribe(sid)
    node.bus.unsubscribe(sid)
    await node.bus.subscribe(sid)
    assert await publisher.session(sid, "one") == 1
    assert await node.next() == b"one"
    # A join whose subscribe is still on its way, then an unsubscribe: unsubscribed.
    pending = asyncio.create_task(node.bus.subscribe(sid))
    await asyncio.sleep(0)  # the task's first step: the SSUBSCRIBE is asked for
    node.bus.unsubscribe(sid)
    await pending
    await node.bus.subscribe(marker)
    assert await publisher.session(sid, "two") == 0
    # Many flips in one go: the last call wins.
    for i in range(50):
        task = asyncio.create_task(node.bus.subscribe(sid))
        await asyncio.sleep(0)
        if i < 49:
            node.bus.unsubscribe(sid)
    await task
    assert await publisher.session(sid, "three") == 1
    assert await node.next() == b"three"
    assert node.pending() == []


async def test_a_node_gets_only_the_events_of_its_sessions(nodes: Any, publisher: Publisher
                                                           ) -> None:
    a, b = await nodes("a"), await nodes("b")
    sessions = one_per_bucket(a.keys) + [s for k in range(BUCKETS)
                                         for s in same_bucket(a.keys, 3, k)[1:]]
    mine_a = set(sessions[0::3])
    mine_b = set(sessions[1::3])  # the last third: nobody's
    for sid in mine_a:
        await a.bus.subscribe(sid)
    for sid in mine_b:
        await b.bus.subscribe(sid)
    for sid in sessions:
        await publisher.session(sid, sid)
    await publisher.node("b", "for b")
    # Markers behind everything, on every slot: one subscribed marker per bucket.
    for i, node in enumerate((a, b)):
        for k in range(BUCKETS):
            marker = same_bucket(node.keys, 5, k)[3 + i]
            await node.bus.subscribe(marker)
            await publisher.session(marker, "marker")
    for node, mine, extra in ((a, mine_a, 0), (b, mine_b, 1)):
        got = [await node.next() for _ in range(len(mine) + extra + BUCKETS)]
        assert {g.decode() for g in got if g != b"marker"} - {"for b"} == mine
        assert node.pending() == []
        # Counted off the wire: nothing else even reached the node.
        assert node.bus.received == len(mine) + extra + BUCKETS
        assert node.bus.dropped == 0


# faults ---------------------------------------------------------------------------
async def test_single_redis_restart_restores_and_delivers() -> None:
    server = RedisServer()
    server.start()
    client = aioredis.Redis(port=server.port)
    pub = aioredis.Redis(port=server.port)
    try:
        node = await Node(client, Keys(buckets=BUCKETS), "n1").start()
        await node.bus.subscribe("room")
        server.restart_empty()
        await asyncio.wait_for(node.restored.wait(), EVENT_WAIT)
        assert await Publisher(pub, node.keys).session("room", "after") == 1
        assert await node.next() == b"after"
        await node.bus.close()
    finally:
        await client.aclose()
        await pub.aclose()
        server.stop()


async def test_a_silent_connection_is_dropped_and_rebuilt(
        redis_server: RedisServer, tcp_proxy: Any) -> None:  # noqa: F811
    """A link that stays up but carries nothing (no RST, no FIN) is found by the
    bus' PING, dropped and rebuilt; the node is told to reconcile."""
    proxy: TcpProxy = tcp_proxy(redis_server.port)
    client = aioredis.Redis(port=proxy.port)
    pub = aioredis.Redis(port=redis_server.port)
    try:
        node = Node(client, Keys(buckets=BUCKETS), "n-silent")
        node.bus.health_seconds = 0.4
        await node.start()
        await node.bus.subscribe("room")
        restored = asyncio.create_task(node.bus.restored(node.bus.restores))
        proxy.stall()
        await asyncio.wait_for(node.bus.lost(0), 10)
        assert not node.restored.is_set()
        assert not restored.done()  # lost is not restored
        proxy.restore()
        await asyncio.wait_for(node.restored.wait(), EVENT_WAIT)
        await asyncio.wait_for(restored, EVENT_WAIT)
        assert node.bus.restores == 1
        assert await Publisher(pub, node.keys).session("room", "after") >= 1
        assert await node.next() == b"after"
        await node.bus.close()
    finally:
        await client.aclose()
        await pub.aclose()


async def test_cluster_reshard_of_a_subscribed_slot_keeps_delivery(
        redis_cluster: RedisClusterProcs) -> None:
    keys = Keys(buckets=BUCKETS)
    client, pub_client = cluster_client(redis_cluster), cluster_client(redis_cluster)
    try:
        node = await Node(client, keys, "n1").start()
        sid = "moving-room"
        await node.bus.subscribe(sid)
        await node.bus.subscribe("staying-room")
        slot = keyslot(keys.channel(sid))
        src = redis_cluster.owner(slot).port
        dst = next(m.port for m in redis_cluster.masters() if m.port != src)
        pub = Publisher(pub_client, keys)
        assert await pub.session(sid, "before") == 1
        assert await node.next() == b"before"
        await asyncio.to_thread(redis_cluster.move_slots, [slot], dst)
        # Redis drops the channel's subscribers at the old owner; the bus
        # subscribes at the new one and says events may have been missed.
        await asyncio.wait_for(node.restored.wait(), EVENT_WAIT)
        assert redis_cluster.owner(slot).port == dst
        assert await pub.session(sid, "after") == 1  # follows MOVED to the new owner
        assert await node.next() == b"after"
        assert await pub.session("staying-room", "still") == 1
        assert await node.next() == b"still"
        # And back again.
        node.restored.clear()
        await asyncio.to_thread(redis_cluster.move_slots, [slot], src)
        await asyncio.wait_for(node.restored.wait(), EVENT_WAIT)
        assert await pub.session(sid, "home") == 1
        assert await node.next() == b"home"
        assert node.pending() == []
        await node.bus.close()
    finally:
        await client.aclose()
        await pub_client.aclose()


async def test_cluster_master_killed_replica_promoted(make_redis_cluster: Any) -> None:
    procs: RedisClusterProcs = make_redis_cluster(3, replicas=1)
    keys = Keys(buckets=BUCKETS)
    client = cluster_client(procs)
    try:
        node = await Node(client, keys, "n1").start()
        sessions = one_per_bucket(keys)
        for sid in sessions:
            await node.bus.subscribe(sid)
        victim = procs.owner(keyslot(keys.channel(sessions[0]))).port
        new = await asyncio.to_thread(procs.kill_master, victim)
        await asyncio.wait_for(node.restored.wait(), 30)
        assert procs.owner(keyslot(keys.channel(sessions[0]))).port == new
        pub_client = cluster_client(procs)
        try:
            pub = Publisher(pub_client, keys)
            for sid in sessions:
                assert await pub.session(sid, sid) == 1
            assert {(await node.next()).decode() for _ in sessions} == set(sessions)
            assert await pub.node("n1", "replaced") == 1
            assert await node.next() == b"replaced"
            assert node.pending() == []
        finally:
            await pub_client.aclose()
        await node.bus.close()
    finally:
        await client.aclose()


async def test_cluster_frozen_master_holds_up_no_other_master(make_redis_cluster: Any
                                                             ) -> None:
    """A master that stops answering (SIGSTOP: its port still accepts connections)
    must not hold up subscribes on the healthy masters while the bus keeps
    trying it; once its replica takes over, its channels come back."""
    procs: RedisClusterProcs = make_redis_cluster(3, replicas=1)
    keys = Keys(buckets=BUCKETS)
    client, pub_client = cluster_client(procs), cluster_client(procs)
    frozen = None
    try:
        node = Node(client, keys, "n1")
        node.bus.health_seconds = 0.5
        await node.start()
        sessions = one_per_bucket(keys)
        for sid in sessions:
            await node.bus.subscribe(sid)
        frozen = procs.owner(keyslot(keys.channel(sessions[0]))).port
        procs.servers[frozen].proc.send_signal(signal.SIGSTOP)
        await asyncio.wait_for(node.bus.lost(0), 10)  # its PING went unanswered
        healthy = [sid for sid in (f"late{i}" for i in range(200))
                   if procs.owner(keyslot(keys.channel(sid))).port != frozen][:5]
        started = asyncio.get_running_loop().time()
        for sid in healthy:
            await node.bus.subscribe(sid)
        assert asyncio.get_running_loop().time() - started < 2.0
        pub = Publisher(pub_client, keys)
        for sid in healthy:
            assert await pub.session(sid, sid) == 1
        assert {(await node.next()).decode() for _ in healthy} == set(healthy)
        # The cluster promotes the frozen master's replica; the bus follows.
        await asyncio.wait_for(node.restored.wait(), 30)
        assert procs.owner(keyslot(keys.channel(sessions[0]))).port != frozen
        assert await pub.session(sessions[0], "back") == 1
        assert await node.next() == b"back"
        await node.bus.close()
    finally:
        if frozen is not None:
            procs.servers[frozen].kill()  # SIGKILL ends a stopped process too
        await client.aclose()
        await pub_client.aclose()


@pytest.mark.parametrize("how", ["kill", "failover"])
async def test_sentinel_failover_restores_and_delivers(make_redis_sentinel: Any, how: str
                                                       ) -> None:
    procs: SentinelProcs = make_redis_sentinel()
    keys = Keys(buckets=BUCKETS)
    client = sentinel_client(procs)
    try:
        node = await Node(client, keys, "n1").start()
        await node.bus.subscribe("room")
        old = procs.master_port()
        if how == "kill":
            await asyncio.to_thread(procs.failover)  # SIGKILLs the master
        else:
            # The old master stays up, and keeps its subscribers for ~10 s after
            # Sentinel has named the new one: the bus must notice by itself.
            assert procs.sentinel is not None
            with procs.sentinel.client() as sentinel:
                sentinel.execute_command("SENTINEL", "FAILOVER", procs.master_name)
        await asyncio.wait_for(node.restored.wait(), 30)
        assert procs.master_port() != old
        pub_client = sentinel_client(procs)
        try:
            assert await Publisher(pub_client, keys).session("room", "after") == 1
            assert await node.next() == b"after"
        finally:
            await pub_client.aclose()
        await node.bus.close()
    finally:
        await client.aclose()
