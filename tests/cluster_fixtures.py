"""A real Redis Cluster and a real Sentinel setup, started by the suite on free ports.

Every process is a `redis-server` the suite starts on 127.0.0.1 and stops by its own
PID (never the machine's Redis on 6379). Registered in tests/conftest.py, so every test
module can ask for these fixtures by name:

    redis_cluster        session: 3 masters, no replicas. Shared: a test may flush it
                         and move slots (it stays `cluster_state:ok`), never kill it.
    cluster_url          function: flushes `redis_cluster`, returns its
                         `redis+cluster://` URL (every master as a startup node).
    make_redis_cluster   function: factory `make_redis_cluster(masters=3, replicas=0)`
                         -> a started cluster of the test's own, stopped afterwards
                         (for tests that kill masters: `replicas=1`).
    redis_sentinel       session: one master, one replica, one sentinel. Shared: flush
                         only, no failover.
    sentinel_target      function: flushes `redis_sentinel`, returns it.
    make_redis_sentinel  function: factory -> a Sentinel setup of the test's own
                         (for failover tests).
    redis_deployment     function, parametrized single / cluster / sentinel: the Settings
                         overrides that put a node on a clean deployment of that kind
                         (`make_node(**redis_deployment)`), for suites that must pass on all.

The helpers block (subprocesses, a sync Redis client): a test that keeps traffic going
while they run calls them in a thread, `await asyncio.to_thread(cluster.move_slots, ...)`.
They return once the change is in place (polling the servers' own state, bounded).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from tests.conftest import free_port, stop_process

SLOTS = 16384


def _exe(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise RuntimeError(f"{name} is missing: ./scripts/test installs redis-server")
    return exe


def _until(what: str, check: Callable[[], Any], seconds: float = 30.0) -> Any:
    """Polls a server's own state until `check` returns something truthy."""
    deadline = time.monotonic() + seconds
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (redis.RedisError, OSError) as err:
            last = err
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not within {seconds:g}s" + (f" (last error: {last})"
                                                              if last else ""))


def keyslot(key: str | bytes) -> int:
    """The cluster slot of a key (hash tags honoured), as the servers compute it."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


class RedisProcess:
    """One redis-server (cluster node, replica or sentinel) in its own directory."""

    def __init__(self, extra: list[str], port: int | None = None,
                 config: str | None = None) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix=f"lobby-redis-{self.port}-")
        self.extra = extra
        self.config = config  # sentinel: a config file it may rewrite
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **kw: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5,
                           decode_responses=True, **kw)

    def start(self) -> None:
        args = [_exe("redis-server")]
        if self.config is not None:
            path = f"{self.dir}/sentinel.conf"
            with open(path, "w") as f:
                f.write(self.config)
            args += [path, "--sentinel"]
        args += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                 "--daemonize", "no", "--logfile", f"{self.dir}/redis.log", *self.extra]
        if self.config is None:
            # No disk, and a replica's full sync starts at once (not 5 s later).
            args += ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        with self.client() as c:
            try:
                _until(f"redis-server on {self.port} answers PING", c.ping, 10)
            except TimeoutError as err:
                raise TimeoutError(f"{err}; its log ends: {self.log_tail()}") from None

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(f"{self.dir}/redis.log") as f:
                return " | ".join(f.read().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to hand over or save anything."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as c:
            return dict(c.info(section))


@dataclass
class ClusterNode:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    master: bool
    master_id: str | None  # a replica's master
    failed: bool
    slots: list[tuple[int, int]] = field(default_factory=list)  # inclusive ranges

    def owns(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)

    @property
    def slot_count(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.slots)


def _parse_nodes(text: str) -> list[ClusterNode]:
    nodes = []
    for line in text.strip().splitlines():
        parts = line.split()
        flags = parts[2].split(",")
        slots: list[tuple[int, int]] = []
        for item in parts[8:]:
            if item.startswith("["):  # a slot being imported or migrated
                continue
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        port = int(parts[1].split("@")[0].rsplit(":", 1)[1] or 0)
        nodes.append(ClusterNode(
            node_id=parts[0], port=port, master="master" in flags,
            master_id=None if parts[3] == "-" else parts[3],
            failed="fail" in flags or "fail?" in flags, slots=slots))
    return nodes


class RedisClusterProcs:
    """A Redis Cluster of `masters` masters and `replicas` replicas per master."""

    def __init__(self, masters: int = 3, replicas: int = 0,
                 node_timeout_ms: int | None = None) -> None:
        self.masters_wanted = masters
        self.replicas_wanted = replicas
        # Short where a test kills masters (failover within a few seconds); longer
        # otherwise, so that a loaded machine never marks a slow master FAIL.
        self.node_timeout_ms = node_timeout_ms or (1500 if replicas else 5000)
        self.servers: dict[int, RedisProcess] = {}

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> RedisClusterProcs:
        extra = ["--cluster-enabled", "yes", "--cluster-node-timeout",
                 str(self.node_timeout_ms),
                 # A replica takes over however long its link was down: tests kill
                 # masters on a machine that may be slow.
                 "--cluster-replica-validity-factor", "0",
                 "--cluster-allow-replica-migration", "no"]
        # Every port is chosen before any server binds, so the OS may hand out one
        # twice: each is taken only once (a repeated one would leave a node out).
        taken: set[int] = set()

        def distinct_port() -> int:
            while (port := free_port()) in taken:
                pass
            taken.add(port)
            return port

        for _ in range(self.masters_wanted * (1 + self.replicas_wanted)):
            server = RedisProcess([], port=distinct_port())
            # The bus port is chosen too: the default (port + 10000) may be taken, or
            # past 65535 for a free port the OS hands out.
            server.extra = [*extra, "--cluster-config-file", f"{server.dir}/nodes.conf",
                            "--cluster-port", str(distinct_port())]
            self.servers[server.port] = server
        try:
            for server in self.servers.values():
                server.start()
            subprocess.run(
                [_exe("redis-cli"), "--cluster", "create",
                 *(s.address for s in self.servers.values()),
                 "--cluster-replicas", str(self.replicas_wanted), "--cluster-yes"],
                check=True, capture_output=True, timeout=60)
            self.wait_ok()
            if self.replicas_wanted:
                self._wait_replicas_synced()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers.values():
            server.remove()

    def restart(self, port: int) -> None:
        """Starts a killed node again on its port (its nodes.conf kept): an old master
        comes back as a replica of whoever took its slots."""
        server = self.servers[port]
        server.start()

        def settled() -> bool:
            me = next(n for n in self.nodes() if n.port == port)
            if me.master:
                return bool(me.slots)
            return server.info("replication").get("master_link_status") == "up"

        _until(f"{port} back as a master of its slots or a replica in sync", settled)
        self.wait_ok()

    # --- what the cluster looks like -------------------------------------------------

    @property
    def ports(self) -> list[int]:
        return [p for p, s in self.servers.items() if s.alive]

    @property
    def url(self) -> str:
        """`redis+cluster://` with every live master as a startup node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.masters())

    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.masters()]

    def nodes(self) -> list[ClusterNode]:
        """CLUSTER NODES as one live node sees it."""
        for port in self.ports:
            with contextlib.suppress(redis.RedisError, OSError):
                with self.servers[port].client() as c:
                    return _parse_nodes(c.execute_command("CLUSTER", "NODES"))
        raise RuntimeError("no live cluster node")

    def masters(self) -> list[ClusterNode]:
        """The live masters that hold slots, by port."""
        return sorted((n for n in self.nodes() if n.master and not n.failed and n.slots),
                      key=lambda n: n.port)

    def replicas_of(self, port: int) -> list[ClusterNode]:
        by_port = {n.port: n for n in self.nodes()}
        master = by_port[port]
        return [n for n in by_port.values() if n.master_id == master.node_id and not n.failed]

    def owner(self, slot: int) -> ClusterNode:
        """The master that serves `slot` now."""
        for node in self.masters():
            if node.owns(slot):
                return node
        raise LookupError(f"no master owns slot {slot}")

    def owner_of_key(self, key: str | bytes) -> ClusterNode:
        return self.owner(keyslot(key))

    def client(self, port: int) -> redis.Redis:
        """A plain (sync) client of one node, e.g. to read what it holds."""
        return self.servers[port].client()

    def _state_ok(self) -> bool:
        live = self.ports
        expect = len(self.servers)
        for port in live:
            with self.servers[port].client() as c:
                info = c.execute_command("CLUSTER", "INFO")
                if "cluster_state:ok" not in info:
                    return False
                if f"cluster_known_nodes:{expect}" not in info:
                    return False
                if "cluster_slots_assigned:16384" not in info:
                    return False
        # Every live node agrees on who owns what (a fresh change has propagated).
        views = []
        for port in live:
            with self.servers[port].client() as c:
                nodes = _parse_nodes(c.execute_command("CLUSTER", "NODES"))
            views.append(sorted((n.port, tuple(n.slots)) for n in nodes
                                if n.master and n.slots and not n.failed))
        return all(v == views[0] for v in views)

    def wait_ok(self, seconds: float = 30) -> None:
        """Until every live node says cluster_state:ok and all agree on the slots."""
        _until("cluster_state:ok on every node", self._state_ok, seconds)

    def _wait_replicas_synced(self, seconds: float = 30) -> None:
        def synced() -> bool:
            replicas = [n for n in self.nodes() if not n.master and not n.failed]
            if len(replicas) < self.masters_wanted * self.replicas_wanted:
                return False
            return all(self.servers[n.port].info("replication").get("master_link_status")
                       == "up" for n in replicas)

        _until("every replica in sync with its master", synced, seconds)

    # --- faults and changes -----------------------------------------------------------

    def flushall(self) -> None:
        for node in self.masters():
            with self.servers[node.port].client() as c:
                c.flushall()

    def flush_shard(self, port: int) -> None:
        """Empties one master (its replicas follow): a shard that lost its data."""
        with self.servers[port].client() as c:
            c.flushall()

    def reshard(self, from_port: int, to_port: int, count: int) -> None:
        """`redis-cli --cluster reshard`: moves `count` slots (and their keys)."""
        by_port = {n.port: n for n in self.nodes()}
        subprocess.run(
            [_exe("redis-cli"), "--cluster", "reshard", f"127.0.0.1:{from_port}",
             "--cluster-from", by_port[from_port].node_id,
             "--cluster-to", by_port[to_port].node_id,
             "--cluster-slots", str(count), "--cluster-yes"],
            check=True, capture_output=True, timeout=120)
        self.wait_ok()

    def start_slot_migration(self, slot: int, to_port: int) -> None:
        """IMPORTING on the target, MIGRATING on the source: from now on the source
        answers ASK for the slot's keys it no longer holds."""
        src = self.owner(slot)
        if src.port == to_port:
            raise ValueError(f"slot {slot} is already on {to_port}")
        dst_id = {n.port: n.node_id for n in self.nodes()}[to_port]
        with self.servers[to_port].client() as c:
            c.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src.node_id)
        with self.servers[src.port].client() as c:
            c.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)

    def migrate_keys(self, slot: int, to_port: int, limit: int | None = None,
                     batch: int = 100) -> int:
        """MIGRATEs (up to `limit`) keys of a slot being migrated; returns how many."""
        src = self.owner(slot)
        moved = 0
        with self.servers[src.port].client() as c:
            while limit is None or moved < limit:
                n = batch if limit is None else min(batch, limit - moved)
                keys = c.execute_command("CLUSTER", "GETKEYSINSLOT", slot, n)
                if not keys:
                    break
                c.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000,
                                  "REPLACE", "KEYS", *keys)
                moved += len(keys)
        return moved

    def finish_slot_migration(self, slot: int, to_port: int) -> None:
        """Moves what is left and gives the slot to the target on every master."""
        self.migrate_keys(slot, to_port)
        dst_id = {n.port: n.node_id for n in self.nodes()}[to_port]
        src = self.owner(slot)
        # The target first, then the source, then the rest (as redis-cli does).
        order = [to_port, src.port, *(n.port for n in self.masters()
                                      if n.port not in (to_port, src.port))]
        for port in order:
            with self.servers[port].client() as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    def move_slots(self, slots: Iterable[int], to_port: int) -> None:
        """Moves chosen slots, keys and all, to the master on `to_port`, one at a time."""
        for slot in slots:
            if self.owner(slot).port == to_port:
                continue
            self.start_slot_migration(slot, to_port)
            self.finish_slot_migration(slot, to_port)
        self.wait_ok()

    def kill_master(self, port: int, seconds: float = 30) -> int:
        """SIGKILLs a master, waits until one of its replicas took its slots and the
        cluster is ok again; returns the new master's port."""
        replicas = {n.port for n in self.replicas_of(port)}
        if not replicas:
            raise RuntimeError(f"master {port} has no replica to promote")
        slots = self.owner_slots(port)
        self.servers[port].kill()

        def promoted() -> int | None:
            for node in self.masters():
                if node.port in replicas and node.slots:
                    return node.port
            return None

        new = _until(f"a replica of {port} promoted", promoted, seconds)
        self.wait_ok(seconds)
        assert all(self.owner(lo).port == new for lo, _ in slots)
        return int(new)

    def owner_slots(self, port: int) -> list[tuple[int, int]]:
        return next(n.slots for n in self.nodes() if n.port == port)


class SentinelProcs:
    """One master, one replica, one sentinel watching them (quorum 1)."""

    master_name = "lobby"

    def __init__(self, down_after_ms: int = 1000, failover_timeout_ms: int = 3000) -> None:
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.servers: dict[int, RedisProcess] = {}
        self.sentinel: RedisProcess | None = None

    def start(self) -> SentinelProcs:
        master = RedisProcess([])
        replica = RedisProcess(["--replicaof", "127.0.0.1", str(master.port)])
        self.servers = {master.port: master, replica.port: replica}
        port = free_port()
        self.sentinel = RedisProcess([], port=port, config="\n".join([
            f"port {port}",
            f"sentinel monitor {self.master_name} 127.0.0.1 {master.port} 1",
            f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
            f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {self.master_name} 1",
            ""]))
        try:
            master.start()
            replica.start()
            _until("the replica in sync",
                   lambda: replica.info("replication").get("master_link_status") == "up")
            # Started after the replica is attached: its first INFO of the master
            # already lists the replica (else it would learn of it 10 s later).
            self.sentinel.start()
            self._wait_watching(master.port, replica.port)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.sentinel is not None:
            self.sentinel.remove()
        for server in self.servers.values():
            server.remove()

    @property
    def sentinels(self) -> str:
        """HOST:PORT list for --redis-sentinel."""
        assert self.sentinel is not None
        return self.sentinel.address

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        assert self.sentinel is not None
        return [("127.0.0.1", self.sentinel.port)]

    def master_port(self) -> int:
        """The master's port as the sentinel reports it."""
        assert self.sentinel is not None
        with self.sentinel.client() as c:
            _host, port = c.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(port)

    def replica_ports(self) -> list[int]:
        return [p for p in self.servers if p != self.master_port()]

    def client(self, port: int) -> redis.Redis:
        return self.servers[port].client()

    def _wait_watching(self, master: int, replica: int, seconds: float = 30) -> None:
        assert self.sentinel is not None
        sentinel = self.sentinel

        def watching() -> bool:
            with sentinel.client() as c:
                state = c.sentinel_master(self.master_name)
                seen = {int(r["port"]): r for r in c.sentinel_slaves(self.master_name)}
            ok = (state["is_master"] and not state["is_sdown"] and not state["is_odown"]
                  and int(state["port"]) == master)
            return ok and replica in seen and not seen[replica]["is_sdown"] and (
                seen[replica]["master-link-status"] == "ok")

        _until(f"the sentinel watching master {master} with replica {replica}",
               watching, seconds)

    def flushall(self) -> None:
        with self.client(self.master_port()) as c:
            c.flushall()
            c.wait(1, 5000)  # the replica has it too before the test starts

    def failover(self, seconds: float = 30) -> int:
        """SIGKILLs the master, waits until the sentinel names its replica as the
        master and that replica says it is one; returns the new master's port."""
        old = self.master_port()
        (new,) = [p for p in self.servers if p != old and self.servers[p].alive]
        self.servers[old].kill()
        _until(f"the sentinel reports {new} as master",
               lambda: self.master_port() == new, seconds)
        _until(f"{new} says role:master",
               lambda: self.servers[new].info("replication").get("role") == "master",
               seconds)
        return new

    def restart_old_master(self, port: int, seconds: float = 30) -> None:
        """Starts a killed master again as the new master's replica (what an operator
        does; the sentinel would convert it too, but only at its next 10 s INFO)."""
        server = self.servers[port]
        master = self.master_port()
        server.extra = ["--replicaof", "127.0.0.1", str(master)]
        server.start()
        _until(f"{port} in sync with the new master {master}",
               lambda: server.info("replication").get("master_link_status") == "up", seconds)
        assert self.sentinel is not None
        sentinel = self.sentinel

        def known() -> bool:
            with sentinel.client() as c:
                seen = {int(r["port"]): r for r in c.sentinel_slaves(self.master_name)}
            return port in seen and not seen[port]["is_sdown"]

        _until(f"the sentinel sees {port} as a replica again", known, seconds)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcs]:
    cluster = RedisClusterProcs(masters=3).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: RedisClusterProcs) -> str:
    """An empty shared cluster (its slot layout may differ from the first one)."""
    redis_cluster.wait_ok()
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture
def make_redis_cluster() -> Iterator[Callable[..., RedisClusterProcs]]:
    clusters: list[RedisClusterProcs] = []

    def factory(masters: int = 3, replicas: int = 0, **kw: Any) -> RedisClusterProcs:
        cluster = RedisClusterProcs(masters=masters, replicas=replicas, **kw).start()
        clusters.append(cluster)
        return cluster

    yield factory
    for cluster in clusters:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelProcs]:
    setup = SentinelProcs().start()
    yield setup
    setup.stop()


@pytest.fixture
def sentinel_target(redis_sentinel: SentinelProcs) -> SentinelProcs:
    redis_sentinel.flushall()
    return redis_sentinel


@pytest.fixture
def make_redis_sentinel() -> Iterator[Callable[..., SentinelProcs]]:
    setups: list[SentinelProcs] = []

    def factory(**kw: Any) -> SentinelProcs:
        setup = SentinelProcs(**kw).start()
        setups.append(setup)
        return setup

    yield factory
    for setup in setups:
        setup.stop()


@pytest.fixture(params=["single", "cluster", "sentinel"])
def redis_deployment(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "single":
        return {"redis_url": request.getfixturevalue("redis_url")}
    if request.param == "cluster":
        return {"redis_cluster_url": request.getfixturevalue("cluster_url")}
    setup = request.getfixturevalue("sentinel_target")
    return {"redis_sentinel": setup.sentinels, "redis_sentinel_master": setup.master_name}


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
