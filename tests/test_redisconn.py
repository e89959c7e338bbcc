"""lobby/redisconn.py: the client for each deployment, against the suite's real one
Redis, Redis Cluster and Sentinel setup; the flags that name them."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub, RedisCluster
from redis.exceptions import MaxConnectionsError

from lobby import redisconn
from lobby.config import Settings, StartupError
from tests.cluster_fixtures import RedisClusterProcs, SentinelProcs, keyslot
from tests.conftest import NodeFactory, RedisServer


def _target(**kw: Any) -> redisconn.RedisTarget | None:
    return redisconn.target(Settings(**kw))


# --- the flags ----------------------------------------------------------------------

def test_flags_naming_two_deployments_are_refused_naming_both() -> None:
    with pytest.raises(StartupError) as err:
        _target(redis_url="redis://127.0.0.1:1/0", redis_cluster_url="redis+cluster://h:1")
    assert err.value.exit_code == 2
    assert "--redis-url (LOBBY_REDIS_URL) and --redis-cluster-url" in str(err.value)
    with pytest.raises(StartupError, match=r"--redis-cluster-url .* and --redis-sentinel"):
        _target(redis_cluster_url="redis://h:1", redis_sentinel="h:26379",
                redis_sentinel_master="m")


def test_sentinel_flags_go_together() -> None:
    with pytest.raises(StartupError, match="needs --redis-sentinel-master NAME"):
        _target(redis_sentinel="127.0.0.1:26379")
    with pytest.raises(StartupError, match=r"--redis-sentinel-master .*needs --redis-sentinel"):
        _target(redis_sentinel_master="lobby")
    with pytest.raises(StartupError, match="'h:x' is not HOST:PORT"):
        _target(redis_sentinel="h:x", redis_sentinel_master="lobby")
    t = _target(redis_sentinel="10.0.0.1:5000, 10.0.0.2", redis_sentinel_master="lobby")
    assert t is not None and t.kind == "sentinel" and t.master == "lobby"
    assert t.nodes == (("10.0.0.1", 5000), ("10.0.0.2", 26379))


def test_a_cluster_url_with_a_database_other_than_0_is_refused() -> None:
    for flag, url in (("redis_cluster_url", "redis://127.0.0.1:7000/1"),
                      ("redis_url", "redis+cluster://127.0.0.1:7000/3")):
        with pytest.raises(StartupError) as err:
            _target(**{flag: url})
        assert err.value.exit_code == 2
        assert "SELECT is not allowed in cluster mode" in str(err.value)
    for url in ("redis+cluster://127.0.0.1:7000/0", "redis+cluster://127.0.0.1:7000/",
                "redis+cluster://127.0.0.1:7000"):
        t = _target(redis_cluster_url=url)
        assert t is not None and t.kind == "cluster"


def test_a_cluster_url_names_startup_nodes_and_keeps_credentials_out_of_logs() -> None:
    t = _target(redis_url="rediss+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2:7001")
    assert t is not None and t.kind == "cluster" and t.flag == "--redis-url"
    assert t.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (t.username, t.password, t.tls) == ("app", "s@cret", True)
    assert "cret" not in t.describe() and "cret" not in repr(t)
    plain = _target(redis_url="redis://:pw@127.0.0.1:1/2")
    assert plain is not None and plain.kind == "single"
    assert plain.describe() == "Redis at redis://***@127.0.0.1:1/2"
    assert _target() is None  # embedded
    with pytest.raises(StartupError, match=r"options in the URL \(\?\.\.\.\)"):
        _target(redis_cluster_url="redis+cluster://h:1?ssl_cert_reqs=none")


async def test_serve_with_conflicting_redis_flags_exits_2_with_one_line() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lobby.cli", "serve", "--port", "0",
        "--redis-url", "redis://127.0.0.1:1/0", "--redis-sentinel", "127.0.0.1:2",
        "--redis-sentinel-master", "lobby", stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin"})
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert lines[-1].startswith("lobby serve: error: --redis-url (LOBBY_REDIS_URL) and "
                                "--redis-sentinel (LOBBY_REDIS_SENTINEL) name different")
    bad = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lobby.cli", "serve", "--redis-cluster-url", "unix:///tmp/x",
        stderr=asyncio.subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    _, err = await asyncio.wait_for(bad.communicate(), 30)
    assert bad.returncode == 2 and "--redis-cluster-url" in err.decode()


def _clients(port: int, name: str) -> int:
    """Client connections the server holds under that client name."""
    with redis.Redis(port=port) as c:
        return sum(1 for conn in c.client_list() if conn.get("name") == name)


# --- one Redis ----------------------------------------------------------------------

async def _burst(client: Any, keys: list[str], seconds: float = 0.1) -> list[Any]:
    """Each call holds its connection `seconds` (BLPOP of an empty list)."""
    return await asyncio.gather(*(client.blpop([k], timeout=seconds) for k in keys))


async def test_one_redis_client_is_the_blocking_pool_and_waits_at_its_limit(
        redis_url: str, redis_server: RedisServer) -> None:
    t = _target(redis_url=redis_url)
    assert t is not None
    client = redisconn.connect(t, max_connections=3, client_name="burst-single")
    try:
        assert not redisconn.is_cluster(client) and redisconn.primaries(client) == []
        assert await client.ping() is True
        assert await _burst(client, [f"q{i}" for i in range(12)]) == [None] * 12
        assert _clients(redis_server.port, "burst-single") == 3
        ps = await redisconn.pubsub(client)
        assert isinstance(ps, PubSub) and not isinstance(ps, ClusterPubSub)
        await ps.aclose()
    finally:
        await client.aclose()


# --- Redis Cluster ------------------------------------------------------------------

def _keys_on_every_master(cluster: RedisClusterProcs, per_master: int) -> list[str]:
    found: dict[int, list[str]] = {}
    i = 0
    while min((len(v) for v in found.values()), default=0) < per_master or len(found) < 3:
        key = f"burst:{i}"
        found.setdefault(cluster.owner_of_key(key).port, []).append(key)
        i += 1
    return [k for keys in found.values() for k in keys[:per_master]]


async def test_cluster_client_pings_and_reaches_every_master(
        redis_cluster: RedisClusterProcs, cluster_url: str) -> None:
    t = _target(redis_cluster_url=cluster_url)
    assert t is not None
    client = redisconn.connect(t)
    try:
        assert redisconn.is_cluster(client)
        assert await client.ping() is True
        keys = _keys_on_every_master(redis_cluster, 2)
        for k in keys:
            await client.set(k, k)  # each to the master of its slot, MOVED or not
        assert {n.port for n in redisconn.primaries(client)} == {
            m.port for m in redis_cluster.masters()}
        for m in redis_cluster.masters():
            with redis_cluster.client(m.port) as c:
                assert c.dbsize() == 2
        pipe = client.pipeline()
        for k in keys:
            pipe.get(k)
        assert await pipe.execute() == [k.encode() for k in keys]
    finally:
        await client.aclose()


async def test_a_cluster_burst_beyond_the_limit_waits_instead_of_failing(
        redis_cluster: RedisClusterProcs, cluster_url: str) -> None:
    keys = _keys_on_every_master(redis_cluster, 10)
    t = _target(redis_cluster_url=cluster_url)
    assert t is not None
    # What the semaphore is for: redis-py's own cluster client fails such a burst.
    raw = RedisCluster.from_url(cluster_url.replace("redis+cluster", "redis").split(",")[0],
                                max_connections=2)
    try:
        with pytest.raises(MaxConnectionsError):
            await _burst(raw, keys)
    finally:
        await raw.aclose()
    client = redisconn.connect(t, max_connections=2)
    assert isinstance(client, redisconn.BoundedRedisCluster)
    try:
        assert await _burst(client, keys) == [None] * len(keys)
        assert client.waited > 0 and client.in_use == 0
        pipes = []
        for i in range(8):
            pipe = client.pipeline()
            for k in keys[i::8]:
                pipe.blpop([k], timeout=0.05)
            pipes.append(pipe.execute())
        assert all(r == [None] * len(r) for r in await asyncio.gather(*pipes))
        for node in client.get_primaries():
            # Commands take their master's connection only under a permit.
            assert len(node._connections) <= 2
    finally:
        await client.aclose()


async def test_cluster_client_follows_moved_and_ask_while_slots_move(
        redis_cluster: RedisClusterProcs, cluster_url: str) -> None:
    t = _target(redis_cluster_url=cluster_url)
    assert t is not None
    client = redisconn.connect(t)
    counter = "{moving}:count"
    slot = keyslot(counter)
    script = client.register_script(
        "redis.call('INCR', KEYS[1]); return redis.call('GET', KEYS[1])")
    errors: list[BaseException] = []
    done = 0
    stop = asyncio.Event()
    progress = asyncio.Condition()

    async def traffic() -> None:
        nonlocal done
        while not stop.is_set():
            try:
                await script(keys=[counter])
                done += 1
            except Exception as err:  # any failed call fails the test below
                errors.append(err)
            async with progress:
                progress.notify_all()

    async def twenty_more_calls() -> None:
        target = done + 20
        async with asyncio.timeout(20), progress:
            await progress.wait_for(lambda: done >= target or bool(errors))

    try:
        await client.set(counter, 0)
        runner = asyncio.create_task(traffic())
        for _ in range(2):  # away and back: each is a MOVED for the client's slot map
            src = redis_cluster.owner(slot).port
            dst = next(m.port for m in redis_cluster.masters() if m.port != src)
            # Half migrated first: the counter still on the source, then moved: ASK.
            await asyncio.to_thread(redis_cluster.start_slot_migration, slot, dst)
            await asyncio.to_thread(redis_cluster.finish_slot_migration, slot, dst)
            await asyncio.to_thread(redis_cluster.wait_ok)
            await twenty_more_calls()
            assert redis_cluster.owner(slot).port == dst
        await asyncio.to_thread(redis_cluster.reshard, redis_cluster.owner(slot).port,
                                next(m.port for m in redis_cluster.masters()
                                     if not m.owns(slot)), 5)
        await twenty_more_calls()
        stop.set()
        await runner
        assert errors == []
        assert int(await client.get(counter)) == done
    finally:
        stop.set()
        await client.aclose()


async def test_cluster_pubsub_is_sharded(redis_cluster: RedisClusterProcs,
                                         cluster_url: str) -> None:
    t = _target(redis_cluster_url=cluster_url)
    assert t is not None
    client = redisconn.connect(t)
    ps = await redisconn.pubsub(client)
    assert isinstance(ps, ClusterPubSub)
    try:
        await ps.ssubscribe("{s1}:events")
        assert (await ps.get_sharded_message(timeout=2))["type"] == "ssubscribe"
        assert await client.spublish("{s1}:events", b"hello") == 1
        async with asyncio.timeout(5):
            while (msg := await ps.get_sharded_message(timeout=0.5)) is None:
                pass
        assert msg["type"] == "smessage" and msg["data"] == b"hello"
    finally:
        await ps.aclose()
        await client.aclose()


# --- Sentinel -----------------------------------------------------------------------

def _sentinel_target(setup: SentinelProcs) -> redisconn.RedisTarget:
    t = _target(redis_sentinel=setup.sentinels, redis_sentinel_master=setup.master_name)
    assert t is not None
    return t


async def test_sentinel_client_talks_to_the_master_and_waits_at_its_limit(
        sentinel_target: SentinelProcs) -> None:
    client = redisconn.connect(_sentinel_target(sentinel_target), max_connections=3,
                               client_name="burst-sentinel")
    try:
        assert not redisconn.is_cluster(client)
        await client.set("k", "v")
        master = sentinel_target.master_port()
        with sentinel_target.client(master) as c:
            assert c.get("k") == "v"
        assert await _burst(client, [f"q{i}" for i in range(12)]) == [None] * 12
        assert _clients(master, "burst-sentinel") == 3
    finally:
        await client.aclose()


async def test_sentinel_client_follows_a_failover(
        make_redis_sentinel: Callable[..., SentinelProcs]) -> None:
    setup = make_redis_sentinel()
    client = redisconn.connect(_sentinel_target(setup))
    try:
        await client.set("k", "before")
        await client.wait(1, 5000)
        new = await asyncio.to_thread(setup.failover)
        # The pooled connection to the killed master fails; the retry asks the
        # sentinel again and lands on the promoted replica.
        assert await client.get("k") == b"before"
        await client.set("k", "after")
        with setup.client(new) as c:
            assert c.get("k") == "after"
        assert (await client.connection_pool.get_master_address())[1] == new
    finally:
        await client.aclose()


async def test_a_node_runs_on_sentinel_and_follows_a_failover(
        make_redis_sentinel: Callable[..., SentinelProcs], make_node: NodeFactory,
        connect_player: Callable[..., Any]) -> None:
    setup = make_redis_sentinel()
    node = await make_node(redis_sentinel=setup.sentinels,
                           redis_sentinel_master=setup.master_name)
    assert node.mode == "redis"
    host = await connect_player(node, "host")
    created = await host.ok("create_session", max_players=4)
    with setup.client(setup.master_port()) as c:
        c.wait(1, 5000)
    await asyncio.to_thread(setup.failover)
    async with asyncio.timeout(20):
        while True:  # requests during the failover itself may fail; then it follows
            try:
                guest = await connect_player(node, "guest")
                break
            except Exception:
                await asyncio.sleep(0.2)
    joined = await guest.ok("join_session", session_id=created["session"]["session_id"])
    assert joined["session"]["player_count"] == 2


async def test_redis_deployment_names_a_clean_deployment_of_each_kind(
        redis_deployment: dict[str, str], request: pytest.FixtureRequest) -> None:
    t = redisconn.target(Settings(**redis_deployment))
    assert t is not None
    assert t.kind == request.node.callspec.params["redis_deployment"]
    client = redisconn.connect(t)
    try:
        assert await client.ping() is True
        assert await client.dbsize() == 0  # flushed for this test (every master)
        await client.set("left-behind", 1)  # the next test's flush removes it
    finally:
        await client.aclose()
