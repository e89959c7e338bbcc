"""The Redis bus on sharded pub/sub: one Redis, Sentinel and a real Redis Cluster.

Every deployment is real processes the test starts itself. Messages are
published with SPUBLISH from another client, as the store's scripts do.
"Nothing arrived" is proven without sleeping: a marker published afterwards
on a channel of the same slot (so on the same connection, behind it) arrives,
and the bus' own count of messages read off the wire says what came.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from lobby.bus import RedisBus
from lobby.store.keys import Keys
from tests.conftest import RedisServer, free_port, stop_process
from tests.faults import TcpProxy, tcp_proxy  # noqa: F401

BUCKETS = 16  # sessions spread over slots, so over every master of a cluster
EVENT_WAIT = 10.0


# real deployments -----------------------------------------------------------------
def _ping(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _until(check: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


class RedisProcess:
    def __init__(self, port: int, directory: str, *args: str) -> None:
        self.port = port
        exe = shutil.which("redis-server")
        assert exe is not None, "redis-server is missing: ./scripts/test installs it"
        self.proc = subprocess.Popen(
            [exe, *args, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _until(lambda: _ping(port), 10, f"redis-server on {port}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc)


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is a valid port too."""
    while True:
        port = free_port()
        if port < 55000 and _port_free(port + 10000):
            return port


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Cluster:
    """A real Redis Cluster: `masters` masters, each with `replicas` replicas."""

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        self.dir = tempfile.mkdtemp(prefix="lobby-cluster-")
        self.servers = [
            RedisProcess(port, self.dir, "--cluster-enabled", "yes",
                         "--cluster-config-file", f"{self.dir}/nodes-{port}.conf",
                         "--cluster-node-timeout", "1000")
            for port in (cluster_port() for _ in range(masters * (1 + replicas)))
        ]
        subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{s.port}" for s in self.servers),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.wait_ok()
        if replicas:
            # A replica that has never synced with its master does not take over.
            _until(self._replicas_synced, 30, "replicas in sync")

    def _replicas_synced(self) -> bool:
        infos = [self.client(s.port).info("replication") for s in self.alive()]
        replicas = [i for i in infos if i.get("role") == "slave"]
        return bool(replicas) and all(i.get("master_link_status") == "up" for i in replicas)

    def alive(self) -> list[RedisProcess]:
        return [s for s in self.servers if s.proc.poll() is None]

    def wait_ok(self) -> None:
        def ok() -> bool:
            for s in self.alive():
                info = redis.Redis(port=s.port, decode_responses=True).cluster("info")
                if info.get("cluster_state") != "ok":
                    return False
            return True
        _until(ok, 30, "cluster_state:ok")

    def client(self, port: int | None = None) -> redis.Redis:
        return redis.Redis(port=port or self.alive()[0].port)

    def node_id(self, port: int) -> str:
        return self.client(port).execute_command("CLUSTER MYID").decode()

    def owner(self, slot: int) -> RedisProcess:
        for s in self.alive():
            for start, end, master, *_ in self.client(s.port).execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(x for x in self.servers if x.port == port)
        raise LookupError(slot)

    def masters(self) -> list[RedisProcess]:
        ports = {int(m[1]) for _, _, m, *_ in
                 self.client().execute_command("CLUSTER SLOTS")}
        return [s for s in self.alive() if s.port in ports]

    def move_slot(self, slot: int, to: RedisProcess) -> None:
        """Move one slot the way `redis-cli --cluster reshard` does (its channels
        hold no keys, so there is nothing to MIGRATE)."""
        src = self.owner(slot)
        src_id, dst_id = self.node_id(src.port), self.node_id(to.port)
        self.client(to.port).execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        self.client(src.port).execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        self.client(src.port).execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        self.client(to.port).execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        for s in self.masters():
            if s not in (src, to):
                self.client(s.port).execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelSetup:
    """One master, one replica, one sentinel."""

    NAME = "lobby"

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="lobby-sentinel-")
        self.master = RedisProcess(free_port(), self.dir)
        self.replica = RedisProcess(free_port(), self.dir,
                                    "--replicaof", "127.0.0.1", str(self.master.port))
        self.sentinel_port = free_port()
        conf = os.path.join(self.dir, "sentinel.conf")
        with open(conf, "w") as f:
            f.write(f"sentinel monitor {self.NAME} 127.0.0.1 {self.master.port} 1\n"
                    f"sentinel down-after-milliseconds {self.NAME} 1000\n"
                    f"sentinel failover-timeout {self.NAME} 5000\n")
        exe = shutil.which("redis-server")
        assert exe is not None
        self.sentinel = subprocess.Popen(
            [exe, conf, "--sentinel", "--port", str(self.sentinel_port),
             "--bind", "127.0.0.1", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _until(lambda: self._knows_replica(), 20, "the sentinel to see the replica")

    def _sentinel(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_port, socket_timeout=1)

    def _knows_replica(self) -> bool:
        try:
            info = redis.Redis(port=self.replica.port).info("replication")
            return info.get("master_link_status") == "up" and bool(
                self._sentinel().execute_command("SENTINEL REPLICAS", self.NAME))
        except redis.RedisError:
            return False

    def master_port(self) -> int:
        _, port = self._sentinel().execute_command(
            "SENTINEL GET-MASTER-ADDR-BY-NAME", self.NAME)
        return int(port)

    def client(self) -> aioredis.Redis:
        return Sentinel([("127.0.0.1", self.sentinel_port)]).master_for(self.NAME)

    def stop(self) -> None:
        stop_process(self.sentinel)
        self.master.stop()
        self.replica.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def single() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(3)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def sentinel_shared() -> Iterator[SentinelSetup]:
    """For tests that fail nothing over."""
    s = SentinelSetup()
    yield s
    s.stop()


@pytest.fixture
def sentinel_setup() -> Iterator[SentinelSetup]:
    s = SentinelSetup()
    yield s
    s.stop()


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
    """(a factory of the clients a node would hold, a publisher's client)."""
    clients: list[Any] = []
    if request.param == "single":
        server: RedisServer = request.getfixturevalue("single")

        def make() -> Any:
            c = aioredis.Redis(port=server.port)
            clients.append(c)
            return c
    elif request.param == "sentinel":
        setup: SentinelSetup = request.getfixturevalue("sentinel_shared")

        def make() -> Any:
            c = setup.client()
            clients.append(c)
            return c
    else:
        c3: Cluster = request.getfixturevalue("cluster")

        def make() -> Any:
            c = RedisCluster(host="127.0.0.1", port=c3.alive()[0].port)
            clients.append(c)
            return c
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
        single: RedisServer, tcp_proxy: Any) -> None:  # noqa: F811
    """A link that stays up but carries nothing (no RST, no FIN) is found by the
    bus' PING, dropped and rebuilt; the node is told to reconcile."""
    proxy: TcpProxy = tcp_proxy(single.port)
    client = aioredis.Redis(port=proxy.port)
    pub = aioredis.Redis(port=single.port)
    try:
        node = Node(client, Keys(buckets=BUCKETS), "n-silent")
        node.bus.health_seconds = 0.4
        await node.start()
        await node.bus.subscribe("room")
        proxy.stall()
        # Polled: the bus' verdict is a counter, not an event.
        async with asyncio.timeout(10):
            while node.bus.losses == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert not node.restored.is_set()
        proxy.restore()
        await asyncio.wait_for(node.restored.wait(), EVENT_WAIT)
        assert await Publisher(pub, node.keys).session("room", "after") >= 1
        assert await node.next() == b"after"
        await node.bus.close()
    finally:
        await client.aclose()
        await pub.aclose()


async def test_cluster_reshard_of_a_subscribed_slot_keeps_delivery(cluster: Cluster) -> None:
    keys = Keys(buckets=BUCKETS)
    client = RedisCluster(host="127.0.0.1", port=cluster.alive()[0].port)
    pub_client = RedisCluster(host="127.0.0.1", port=cluster.alive()[0].port)
    try:
        node = await Node(client, keys, "n1").start()
        sid = "moving-room"
        await node.bus.subscribe(sid)
        await node.bus.subscribe("staying-room")
        slot = client.keyslot(keys.channel(sid))
        src = cluster.owner(slot)
        dst = next(m for m in cluster.masters() if m is not src)
        pub = Publisher(pub_client, keys)
        assert await pub.session(sid, "before") == 1
        assert await node.next() == b"before"
        cluster.move_slot(slot, dst)
        # Redis drops the channel's subscribers at the old owner; the bus
        # subscribes at the new one and says events may have been missed.
        await asyncio.wait_for(node.restored.wait(), EVENT_WAIT)
        assert cluster.owner(slot) is dst
        assert await pub.session(sid, "after") == 1  # follows MOVED to the new owner
        assert await node.next() == b"after"
        assert await pub.session("staying-room", "still") == 1
        assert await node.next() == b"still"
        # And back again.
        node.restored.clear()
        cluster.move_slot(slot, src)
        await asyncio.wait_for(node.restored.wait(), EVENT_WAIT)
        assert await pub.session(sid, "home") == 1
        assert await node.next() == b"home"
        await node.bus.close()
    finally:
        await client.aclose()
        await pub_client.aclose()


async def test_cluster_master_killed_replica_promoted() -> None:
    c6 = Cluster(3, replicas=1)
    keys = Keys(buckets=BUCKETS)
    client = RedisCluster(host="127.0.0.1", port=c6.servers[0].port)
    try:
        node = await Node(client, keys, "n1").start()
        sessions = one_per_bucket(keys)
        for sid in sessions:
            await node.bus.subscribe(sid)
        victim = c6.owner(client.keyslot(keys.channel(sessions[0])))
        victim.kill()
        await asyncio.wait_for(node.restored.wait(), 30)
        await asyncio.to_thread(c6.wait_ok)
        assert c6.owner(client.keyslot(keys.channel(sessions[0]))) is not victim
        pub_client = RedisCluster(host="127.0.0.1", port=c6.alive()[0].port)
        try:
            pub = Publisher(pub_client, keys)
            for sid in sessions:
                assert await pub.session(sid, sid) == 1
            assert {(await node.next()).decode() for _ in sessions} == set(sessions)
            assert await pub.node("n1", "replaced") == 1
            assert await node.next() == b"replaced"
        finally:
            await pub_client.aclose()
        await node.bus.close()
    finally:
        await client.aclose()
        c6.stop()


@pytest.mark.parametrize("how", ["kill", "failover"])
async def test_sentinel_failover_restores_and_delivers(sentinel_setup: SentinelSetup,
                                                       how: str) -> None:
    keys = Keys(buckets=BUCKETS)
    client = sentinel_setup.client()
    pub_client = sentinel_setup.client()
    try:
        node = await Node(client, keys, "n1").start()
        await node.bus.subscribe("room")
        old = sentinel_setup.master_port()
        if how == "kill":
            sentinel_setup.master.kill()
        else:
            # The old master stays up, and keeps its subscribers for a while
            # after Sentinel has named the new one: the bus must notice itself.
            redis.Redis(port=sentinel_setup.sentinel_port).execute_command(
                "SENTINEL FAILOVER", SentinelSetup.NAME)
        await asyncio.wait_for(node.restored.wait(), 30)
        assert sentinel_setup.master_port() != old
        assert await Publisher(pub_client, keys).session("room", "after") == 1
        assert await node.next() == b"after"
        await node.bus.close()
    finally:
        await client.aclose()
        await pub_client.aclose()
