"""The suite's own Redis Cluster and Sentinel setup do what the tests built on them
assume: the cluster forms, slots move with their keys, a killed master's replica takes
over, the sentinel follows a failover."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest
import redis
from redis.exceptions import AskError, MovedError

from tests.cluster_fixtures import RedisClusterProcs, SentinelProcs, keyslot, port_open


def test_cluster_forms_with_three_masters_covering_every_slot(
        redis_cluster: RedisClusterProcs, cluster_url: str) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    assert sum(m.slot_count for m in masters) == 16384
    assert cluster_url.startswith("redis+cluster://")
    assert all(f"127.0.0.1:{m.port}" in cluster_url for m in masters)
    # A key lives on the master that owns its slot and nowhere else.
    owner = redis_cluster.owner_of_key("fixture:k")
    with redis_cluster.client(owner.port) as c:
        c.set("fixture:k", "v")
        assert c.get("fixture:k") == "v"
    other = next(m for m in masters if m.port != owner.port)
    with redis_cluster.client(other.port) as c, pytest.raises(MovedError):
        c.get("fixture:k")


def test_cluster_url_starts_empty(redis_cluster: RedisClusterProcs, cluster_url: str) -> None:
    for m in redis_cluster.masters():
        with redis_cluster.client(m.port) as c:
            assert c.dbsize() == 0


def test_move_slots_moves_the_slot_and_its_keys(
        redis_cluster: RedisClusterProcs, cluster_url: str) -> None:
    key = "{fixture-move}:a"
    slot = keyslot(key)
    src = redis_cluster.owner(slot)
    with redis_cluster.client(src.port) as c:
        c.set(key, "1")
        c.set("{fixture-move}:b", "2")
    dst = next(m for m in redis_cluster.masters() if m.port != src.port)
    redis_cluster.move_slots([slot], dst.port)
    assert redis_cluster.owner(slot).port == dst.port
    with redis_cluster.client(dst.port) as c:
        assert c.mget(key, "{fixture-move}:b") == ["1", "2"]
    with redis_cluster.client(src.port) as c:
        assert c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0


def test_a_half_migrated_slot_answers_ask_for_moved_keys(
        redis_cluster: RedisClusterProcs, cluster_url: str) -> None:
    slot = keyslot("{fixture-ask}")
    src = redis_cluster.owner(slot)
    dst = next(m for m in redis_cluster.masters() if m.port != src.port)
    with redis_cluster.client(src.port) as c:
        for i in range(4):
            c.set(f"{{fixture-ask}}:{i}", i)
    redis_cluster.start_slot_migration(slot, dst.port)
    assert redis_cluster.migrate_keys(slot, dst.port, limit=2) == 2
    with redis_cluster.client(src.port) as c:
        left = set(c.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10))
        missing = [f"{{fixture-ask}}:{i}" for i in range(4)
                   if f"{{fixture-ask}}:{i}" not in left]
        assert len(left) == 2 and len(missing) == 2
        with pytest.raises(AskError) as ask:
            c.get(missing[0])
        assert not isinstance(ask.value, MovedError) and ask.value.port == dst.port
    redis_cluster.finish_slot_migration(slot, dst.port)
    redis_cluster.wait_ok()
    assert redis_cluster.owner(slot).port == dst.port
    with redis_cluster.client(dst.port) as c:
        assert c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 4


def test_reshard_with_redis_cli_moves_that_many_slots(
        redis_cluster: RedisClusterProcs, cluster_url: str) -> None:
    src, dst = redis_cluster.masters()[:2]
    before = {m.port: m.slot_count for m in redis_cluster.masters()}
    redis_cluster.reshard(src.port, dst.port, 10)
    after = {m.port: m.slot_count for m in redis_cluster.masters()}
    assert after[src.port] == before[src.port] - 10
    assert after[dst.port] == before[dst.port] + 10
    redis_cluster.reshard(dst.port, src.port, 10)  # back, for the tests after this one


def test_flush_shard_empties_one_master_only(
        redis_cluster: RedisClusterProcs, cluster_url: str) -> None:
    masters = redis_cluster.masters()
    keys = {}
    for i in range(60):
        keys.setdefault(redis_cluster.owner_of_key(f"k{i}").port, f"k{i}")
    assert len(keys) == 3
    for port, key in keys.items():
        with redis_cluster.client(port) as c:
            c.set(key, 1)
    redis_cluster.flush_shard(masters[0].port)
    for port, key in keys.items():
        with redis_cluster.client(port) as c:
            assert c.exists(key) == (0 if port == masters[0].port else 1)


def test_killed_master_is_replaced_by_its_replica(
        make_redis_cluster: Callable[..., RedisClusterProcs]) -> None:
    cluster = make_redis_cluster(masters=3, replicas=1)
    assert len(cluster.masters()) == 3 and len(cluster.servers) == 6
    victim = cluster.masters()[0]
    (replica,) = cluster.replicas_of(victim.port)
    key = next(f"k{i}" for i in range(1000)
               if cluster.owner_of_key(f"k{i}").port == victim.port)
    with cluster.client(victim.port) as c:
        c.set(key, "kept")
        c.wait(1, 5000)
    new = cluster.kill_master(victim.port)
    assert new == replica.port
    assert not port_open(victim.port)
    assert cluster.owner_of_key(key).port == new
    with cluster.client(new) as c:
        assert c.get(key) == "kept"
    # Back on its port, the old master serves no slots: it is the new master's replica.
    cluster.restart(victim.port)
    assert victim.port not in {m.port for m in cluster.masters()}
    assert {n.port for n in cluster.replicas_of(new)} == {victim.port}


def test_fixture_processes_are_gone_after_stop(
        make_redis_cluster: Callable[..., RedisClusterProcs]) -> None:
    cluster = make_redis_cluster(masters=3)
    ports = list(cluster.servers)
    assert all(port_open(p) for p in ports)
    cluster.stop()
    assert not any(port_open(p) for p in ports)


def test_sentinel_reports_the_master_and_its_replica(sentinel_target: SentinelProcs) -> None:
    master = sentinel_target.master_port()
    (replica,) = sentinel_target.replica_ports()
    with sentinel_target.client(master) as c:
        c.set("k", "v")
        c.wait(1, 5000)
        assert c.info("replication")["role"] == "master"
    with sentinel_target.client(replica) as c:
        assert c.get("k") == "v"
        with pytest.raises(redis.ReadOnlyError):
            c.set("k", "w")


def test_sentinel_failover_promotes_the_replica(
        make_redis_sentinel: Callable[..., SentinelProcs]) -> None:
    setup = make_redis_sentinel()
    old = setup.master_port()
    (replica,) = setup.replica_ports()
    with setup.client(old) as c:
        c.set("k", "before")
        c.wait(1, 5000)
    new = setup.failover()
    assert new == replica and setup.master_port() == new
    with setup.client(new) as c:
        assert c.get("k") == "before"
        c.set("k", "after")  # writable: a master now
    setup.restart_old_master(old)
    with setup.client(old) as c:
        assert c.info("replication")["role"] == "slave"


def test_redis_cli_is_installed_with_the_server() -> None:
    out = subprocess.run(["redis-cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("redis-cli")
