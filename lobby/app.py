"""Assembles a lobby node from settings: store, bus, hub, handlers, sockets."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import secrets
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from lobby import play, redisconn
from lobby.addresses import (
    AddressLedger,
    ConnectionGate,
    install_accept_error_limiter,
    parse_proxies,
)
from lobby.admin import Call, Handler, OpsAPI
from lobby.allocators.base import Allocator
from lobby.allocators.static import StaticAllocator
from lobby.bus import Bus, MemoryBus, RedisBus
from lobby.callbacks import GameServerAPI
from lobby.config import Settings, StartupError
from lobby.handlers import Lobby, now_ms
from lobby.http import HttpRequest, HttpResponse
from lobby.hub import Hub
from lobby.logs import fields
from lobby.metrics import NodeMetrics
from lobby.nodes import BEAT_SECONDS, NodeRegistry
from lobby.persistence.dynamodb import PersistenceQueue, SessionTable
from lobby.recovery import Rebuilder, Reconciler
from lobby.server import SocketServer, push_many
from lobby.session import SessionRecord
from lobby.store.base import Change, LiveClient, SessionStore
from lobby.store.memory import MemoryStore
from lobby.store.redis import CLUSTER_BUCKETS, RedisStore

log = logging.getLogger("lobby")
LISTEN_BACKLOG = 4096  # connections the kernel queues for this node
# Connections asyncio accepts per wake-up of the listening socket: a sixteenth of
# the open-file limit, up to 4096. Large batches drain connect bursts fastest
# (10,000 clients, 500 connecting at a time: p99 1.3-1.9 s at 4096, 2.7-5.8 s at 64,
# on a loaded 2-core machine); a batch near the limit runs out of descriptors within
# one wake-up (a node at 512 files and a 512 batch locked real players out).
ACCEPT_BATCH_MAX = 4096

CLOSE_SERVICE_RESTART = 1012  # RFC 6455: "reconnect (to another node)"
DRAIN_REASON = "lobby node restarting: reconnect and resume"
READY_PING_SECONDS = 0.5


class LobbyNode:
    """One lobby process (or one of several, in-process, in tests)."""

    def __init__(self, settings: Settings, allocator: Allocator | None = None) -> None:
        self.settings = settings
        self.node_id = settings.node_id or secrets.token_hex(4)
        self.allocator = allocator or _make_allocator(settings)
        self.table: SessionTable | None = None
        self.persistence: PersistenceQueue | None = None
        if settings.dynamodb:
            self.table = SessionTable(
                settings.dynamodb_table, region=settings.aws_region,
                endpoint_url=settings.dynamodb_endpoint_url or settings.aws_endpoint_url,
            )
            self.persistence = PersistenceQueue(
                self.table, on_recovered=self._dynamodb_recovered)
        self.store: SessionStore
        self.bus: Bus
        self._redis: redisconn.RedisClient | None = None
        # One Redis (a blocking pool), a Redis Cluster or a Sentinel master: redisconn
        # checks the flags (exit 2 when they conflict) and builds the client.
        self.redis_target = redisconn.target(settings)
        if self.redis_target is not None:
            # CLIENT SETNAME refuses spaces and newlines, which --node-id may hold.
            name = "lobby-" + "".join(c if c.isalnum() or c in "._:-" else "_"
                                      for c in self.node_id)
            self._redis = redisconn.connect(self.redis_target, client_name=name)
            buckets = settings.redis_buckets or (
                CLUSTER_BUCKETS if self.redis_target.kind == "cluster" else 1)
            if not 1 <= buckets <= 1024:
                raise StartupError("--redis-buckets (LOBBY_REDIS_BUCKETS): between 1 and 1024", 2)
            self.store = RedisStore(self._redis, settings.redis_prefix, buckets,
                                    once=self.redis_target.kind != "single",
                                    link=redisconn.link(self.redis_target, name))
            self.bus = RedisBus(self._redis, self.store.keys)
        else:
            memory_bus = MemoryBus()
            self.store = MemoryStore(memory_bus.publish)
            self.bus = memory_bus
        self.hub = Hub(self.bus, push_many)
        self.lobby = Lobby(
            settings, self.store, self.hub, self.allocator,
            on_change=self._persist, recover=self._recover, node_id=self.node_id,
        )
        max_clients = settings.max_clients if settings.max_clients is not None else _fd_budget()
        # Handshakes in flight hold descriptors too: with the sockets they stay
        # within the open-file limit's reserve (_fd_budget keeps 256 back).
        # Kept clear of the open-file limit by two accept batches: asyncio may
        # accept that many before the gate counts them.
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.accept_batch = max(16, min(ACCEPT_BATCH_MAX, soft_limit // 16))
        # --max-sockets-per-ip across nodes: each node's share in the store, under a
        # heartbeat that lapses with the node's (--node-timeout-seconds).
        self.ledger = AddressLedger(
            self.store, self.node_id, settings.max_sockets_per_ip,
            lapse_ms=int(settings.node_timeout_seconds * 1000),
            beat_seconds=min(BEAT_SECONDS, settings.node_timeout_seconds / 5))
        self.gate = ConnectionGate(
            max_connections=max(16, min(max_clients + settings.max_handshakes,
                                        soft_limit - 64 - 2 * self.accept_batch)),
            max_handshakes=settings.max_handshakes,
            max_handshakes_per_ip=settings.max_handshakes_per_ip,
            max_sockets_per_ip=settings.max_sockets_per_ip,
            trusted_proxies=parse_proxies(settings.trusted_proxy),
            ledger=self.ledger,
        )
        self.rebuilder = Rebuilder(
            self.store, self._load_records, f"{self.node_id}.{secrets.token_hex(4)}",
            hold_ms=lambda: self.lobby.hold_ms, now_ms=now_ms,
        )
        self.reconciler: Reconciler | None = None
        if self.table is not None and self.persistence is not None:
            self.reconciler = Reconciler(self.store, self.table, self.persistence)
        self._tls = _tls_context(settings)
        self.sockets = SocketServer(
            self.lobby, self.node_id,
            rate=settings.rate_limit_per_second, burst=settings.rate_limit_burst,
            max_clients=max_clients,
            max_buffered=settings.max_buffered_bytes,
            gate=self.gate,
            # wss:// and https:// on the same port, the TLS handshake started by
            # each connection once the gate has counted it (lobby.addresses.TlsFront).
            tls=self._tls, tls_timeout=settings.handshake_timeout_seconds,
            ping_interval=settings.ping_interval_seconds,
        )
        # A connection's first request (a WebSocket upgrade or plain HTTP) must come
        # within the handshake timeout: until then it is a handshake in flight.
        self.sockets.http.head_timeout = settings.handshake_timeout_seconds
        GameServerAPI(self.lobby, settings.server_key).register(self.sockets.http.router)
        play.register(self.sockets.http.router)  # the /play/ demo page
        router = self.sockets.http.router
        self.ops = ops = OpsAPI(self)
        router.add("GET", "/metrics", _route(ops.metrics))
        router.add("GET", "/metrics.json", _route(ops.metrics_json))
        router.add("GET", "/readyz", _route(ops.readyz))
        router.add(None, "/admin/", _route(ops.admin), prefix=True)
        self.draining = False
        self._stopping = False
        self.started_at = time.time()
        self.prometheus = NodeMetrics(self)
        self.lobby.observe_request = self.prometheus.observe_request
        self.lobby.observe_claim = self.prometheus.observe_claim
        self.hub.on_fanout = self.prometheus.observe_fanout
        if self.table is not None:
            _time_writes(self.table, self.prometheus.observe_written)
        self.registry = NodeRegistry(self._redis, settings.redis_prefix, self.node_id,
                                     self.node_info)
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._epoch: str | None = None  # the store generation this node has synced with
        self._epoch_lock = asyncio.Lock()
        # Set when this node may have missed what the store did (its link was down,
        # or it was taken for dead): the reconciler then checks every local socket.
        self._reconcile_wanted = asyncio.Event()
        if isinstance(self.bus, RedisBus):
            self.bus.on_restored = self._reconcile_wanted.set

    def metrics(self) -> dict[str, Any]:
        """Counters of this node, for operators (GET /metrics) and the benchmarks."""
        allocator = {k: getattr(self.allocator, k)
                     for k in ("claims", "retries", "failures", "throttled")
                     if hasattr(self.allocator, k)}
        return {
            "node_id": self.node_id,
            "mode": self.mode,
            "clients": self.hub.client_count,
            "local_sessions": self.hub.session_count,
            "events_in": self.hub.events_in,
            "frames_out": self.hub.frames_out,
            "slow_drops": self.sockets.stats["slow_drops"],
            "store_generation": self.lobby.store_generation,
            "allocator": allocator,
            "persistence": self.persistence.metrics if self.persistence is not None else None,
            # per-address limits and password checks (identity)
            "connections": {"open": self.gate.connections, "handshakes": self.gate.handshakes,
                            **self.gate.stats, "ledger": dict(self.ledger.stats)},
            "password_checks": self.lobby.password_checks,
            "reconcile": asdict(self.reconciler.stats) if self.reconciler is not None else None,
            "rebuild": {**asdict(self.rebuilder.stats), "rebuilding": self.rebuilder.rebuilding},
        }

    def node_info(self) -> dict[str, Any]:
        """What GET /admin/nodes shows of this node."""
        return {
            "node_id": self.node_id, "mode": self.mode, "sockets": self.hub.client_count,
            "players": self.hub.player_count,
            "local_sessions": self.hub.session_count, "draining": self.draining,
            "started_at": self.started_at, "seen_at": time.time(),
            "address": f"{self.settings.host}:{self.port if self._server else self.settings.port}",
        }

    async def admin_state_counts(self) -> dict[str, int]:
        """Live sessions by state, store-wide (a scan: the metrics cache it)."""
        counts: dict[str, int] = {}
        cursor: str | None = None
        while True:
            records, cursor = await self.store.scan_sessions(cursor, 500)
            for rec in records:
                counts[rec["state"]] = counts.get(rec["state"], 0) + 1
            if cursor is None:
                return counts

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether a load balancer should send players here, and why not."""
        problems: list[str] = []
        if self.draining:
            problems.append("draining: this node is shutting down")
        if self._redis is not None:
            try:
                await asyncio.wait_for(self._redis.ping(), READY_PING_SECONDS)
            except Exception as err:
                problems.append(f"redis: no answer to PING within {READY_PING_SECONDS}s "
                                f"({type(err).__name__})")
        backlog = self.persistence.pending if self.persistence is not None else 0
        limit = self.settings.ready_max_backlog
        if backlog > limit:
            problems.append(f"dynamodb: {backlog} sessions waiting to be written "
                            f"(over {limit})")
        durability = self.durability()
        if durability is not None and durability["behind"]:
            problems.append(
                f"durability behind: the oldest change not yet in DynamoDB is "
                f"{durability['oldest_unwritten_age_s']:.1f}s old (limit "
                f"{self.settings.durability_max_lag_seconds:g}s), "
                f"{durability['pending']} sessions waiting")
        detail: dict[str, Any] = {"ready": not problems, "node_id": self.node_id,
                                  "persistence_backlog": backlog, "durability": durability}
        if problems:
            detail["reason"] = "; ".join(problems)
        return not problems, detail

    def durability(self) -> dict[str, Any] | None:
        """How far DynamoDB is behind this node's changes (None: no persistence).
        `behind` once the oldest unwritten change is older than
        --durability-max-lag-seconds: a Redis loss now would lose that much."""
        q = self.persistence
        if q is None:
            return None
        age = q.oldest_unwritten_age()
        return {
            "pending": q.pending, "oldest_unwritten_age_s": round(age, 3),
            "gave_up": q.gave_up, "failing_for_s": round(q.failing_for(), 3),
            "behind": age > self.settings.durability_max_lag_seconds,
        }

    def _dynamodb_recovered(self, failed_for: float) -> None:
        if self.reconciler is not None:
            self.reconciler.trigger(failed_for)

    async def _load_records(self) -> list[SessionRecord]:
        if self.table is None:
            return []
        if self.persistence is not None:
            # Our own latest changes first, so the rebuild reads them back.
            await self.persistence.flush(2)
        return await asyncio.to_thread(self.table.load_live_records)


    def _persist(self, change: Change) -> None:
        if self.persistence is not None:
            self.persistence.submit(change.record, ended_reason=change.ended)

    @property
    def mode(self) -> str:
        return "redis" if self.redis_target is not None else "embedded"

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        s = self.settings
        if self._redis is not None:
            where = self.redis_target
            assert where is not None
            await _until_reachable(
                f"{where.flag} ({redisconn.env_name(where.flag)}): {where.describe()}",
                self.store.start, s.startup_timeout_seconds)
        else:
            await self.store.start()
        if self.table is not None and self.persistence is not None:
            endpoint = s.dynamodb_endpoint_url or s.aws_endpoint_url
            where = (
                f"--dynamodb-endpoint-url (LOBBY_DYNAMODB_ENDPOINT_URL): DynamoDB at {endpoint}"
                if endpoint else f"--dynamodb: DynamoDB table {s.dynamodb_table}")
            table = self.table
            await _until_reachable(where, lambda: asyncio.to_thread(table.init_table),
                                   s.startup_timeout_seconds)
            self.persistence.start()
        await self.bus.start(self.node_id, self.hub.on_message)
        if self.lobby.auth is not None:
            await self.lobby.auth.start()
        await self.check_store()
        await self.ledger.start()
        try:
            self._server = await self._listen()
        except OSError as err:
            raise StartupError(
                f"--port (LOBBY_PORT): cannot listen on {s.host}:{s.port}: "
                f"{(err.strerror or str(err)).rsplit(': ', 1)[-1]}", 2) from err
        self._tasks.append(asyncio.create_task(self._sweeper(), name="lobby-sweeper"))
        self._tasks.append(asyncio.create_task(self._reconciler(), name="lobby-servers"))
        self._tasks.append(asyncio.create_task(self._store_reconciler(),
                                               name="lobby-store-reconciler"))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="lobby-heartbeat"))
        if self.sockets.keepalive is not None:
            self._tasks.append(asyncio.create_task(self.sockets.keepalive.run(),
                                                   name="lobby-keepalive"))
        self._log_mode()

    async def _listen(self) -> asyncio.Server:
        server = await self._serve()
        for sock in server.sockets:
            # asyncio's default listen backlog (100) drops handshakes in bursts:
            # with 4096, 1,000 concurrent connects went from p99 2.5 s to 0.5 s.
            # listen() again only resizes the kernel's queue of the socket (on a
            # duplicate descriptor: asyncio hands out no way to the socket itself).
            with socket.fromfd(sock.fileno(), sock.family, sock.type) as dup:
                dup.listen(LISTEN_BACKLOG)
        return server

    async def _serve(self) -> asyncio.Server:
        s = self.settings
        listener = self.sockets.listen(
            max_size=s.max_message_bytes,
            # Lobby frames are tiny JSON; per-message deflate costs tens of KiB
            # per connection for no gain (docs/benchmarks.md has the measurement).
            compression=bool(s.ws_compression),
            server_header="lobby",
            # Counted from the hand-off of the upgrade request (the HTTP front
            # bounds the wait for it): the time process_request may take.
            open_timeout=s.handshake_timeout_seconds,
        )
        # Keepalive pings are the node's, one timer for every socket (lobby.server);
        # plain HTTP (bodies, keep-alive) is answered by lobby.http's front.
        server = await asyncio.get_running_loop().create_server(
            self.sockets.front_factory, s.host, s.port,
            # asyncio accepts up to `backlog` connections per wake-up before any of
            # them is seen by the gate; out of descriptors, that burst is what hits
            # the open-file limit. So it is kept small, and the kernel's queue is
            # made long again in _listen.
            backlog=self.accept_batch,
            # --workers: the kernel spreads new connections over the processes.
            reuse_port=s.reuse_port or None,
        )
        listener.server = server
        return server

    def _log_mode(self) -> None:
        s = self.settings
        if self.lobby.auth is None:
            log.warning(
                "AUTH NONE: players are whoever their hello says they are and hello's token "
                "is not checked. Facing the internet, use --auth jwt with the keys of the "
                "game's backend (--jwt-jwks-url, --jwt-public-key-file or --jwt-secret).")
        else:
            log.info("auth jwt: players are the sub of tokens verified with %s",
                     s.jwt_jwks_url or s.jwt_public_key_file or "the shared secret")
        if self.mode == "embedded":
            log.warning(
                "EMBEDDED MODE: sessions live in this process's memory, one node only, lost "
                "on restart. Use --redis-url (LOBBY_REDIS_URL) to run several nodes."
            )
        else:
            assert self.redis_target is not None
            log.info("redis mode: sessions in %s (prefix %r)", self.redis_target.describe(),
                     s.redis_prefix)
        if self.table is not None:
            log.info("persisting sessions to DynamoDB table %s", s.dynamodb_table)
        else:
            log.warning("no DynamoDB persistence (--dynamodb): sessions are not durable")
        if not s.server_key:
            log.warning("no --server-key: game-server callbacks are refused and "
                        "join_ticket answers TICKETS_DISABLED")
        log.info("event loop: %s", type(asyncio.get_running_loop()).__module__.split(".")[0])
        log.info("node %s listening on %s://%s:%d/ws", self.node_id,
                 "wss" if self._tls else "ws", s.host, self.port)

    async def _heartbeat(self) -> None:
        # Checks the flag too: a cancellation that lands inside a Redis call can
        # come out as a connection error, which this loop would survive.
        while not self._stopping:
            try:
                await self.registry.beat()
            except Exception as err:
                log.debug("node heartbeat failed: %s", err)
            await asyncio.sleep(BEAT_SECONDS)

    async def drain(self) -> None:
        """Stop accepting, tell every client to go elsewhere (1012), give them
        --drain-seconds, then let stop() close what is left and flush writes.

        The closes are spread over the first half of the window so that the
        nodes taking over see a ramp, not every client of this node at once.
        A client's seat stays held in the store (--seat-hold-seconds), so its
        resume on another node finds it in its session.
        """
        self.draining = True
        seconds = self.settings.drain_seconds
        if self._server is not None:
            # Only the listening socket (stop() closes the connections, with 1001).
            self._server.close()
        clients = self.hub.clients()
        log.info("draining: %d sockets told to reconnect (1012) over %.1fs",
                 len(clients), seconds / 2, extra=fields(count=len(clients)))
        with contextlib.suppress(Exception):
            await self.registry.beat()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        steps = max(1, min(len(clients), 20))
        for i in range(steps):
            for client in clients[i::steps]:
                client.close(CLOSE_SERVICE_RESTART, DRAIN_REASON)
            if i < steps - 1:
                await asyncio.sleep(seconds / 2 / steps)
        closing = [asyncio.ensure_future(c.ws.wait_closed())  # type: ignore[attr-defined]
                   for c in clients if hasattr(c, "ws")]
        if closing:
            _, pending = await asyncio.wait(closing, timeout=max(0.0, deadline - loop.time()))
            for fut in pending:
                fut.cancel()
            if pending:
                log.warning("draining: %d sockets still open after %.1fs; closing them",
                            len(pending), seconds)

    async def _reconciler(self) -> None:
        """Releases game servers held for sessions that do not use them (FleetIQ
        claims whose answer was lost, releases that failed): every second while
        a claim's outcome is in doubt, every minute otherwise."""
        while True:
            due = self.lobby.servers.reconcile_interval()
            if due is None:
                return
            await asyncio.sleep(min(due, 1.0))
            if self.lobby.servers.reconcile_interval() != 0:
                continue
            try:
                await self.lobby.reconcile_servers()
            except Exception:
                log.exception("game-server reconciliation failed")

    async def _sweeper(self) -> None:
        interval = self.settings.sweep_interval_seconds
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                await self.lobby.retry_disconnects()
                await self.check_store()
            except Exception as exc:
                if failing:  # one traceback per outage, not one a second
                    log.warning("sweep failed again (%s); retrying in %.1fs", exc, interval)
                else:
                    log.exception("sweep failed; retrying in %.1fs", interval)
                failing = True
                continue
            if failing:
                # The store is reachable again: what did it do meanwhile?
                failing = False
                self._reconcile_wanted.set()

    async def _store_reconciler(self) -> None:
        interval = self.settings.sweep_interval_seconds
        while True:
            await self._reconcile_wanted.wait()
            self._reconcile_wanted.clear()
            try:
                # Synced first: an emptied Redis is rebuilt before anyone is judged.
                await self.check_store()
                await self.lobby.reconcile(self._epoch)
            except Exception as exc:
                log.warning("reconcile failed (%s); retrying in %.1fs", exc, interval)
                await asyncio.sleep(interval)
                self._reconcile_wanted.set()

    async def check_store(self, *, wait: float = 0.0) -> int:
        """Sweep expiries, and rebuild the store if it came back empty (from
        DynamoDB, and re-register this node's sockets). Returns the store
        generation this node is on: it grows with every rebuild it has seen.
        While another node holds the rebuild lease, waits up to `wait` seconds
        for it to finish (the sweeper does not wait; a missed resume does)."""
        deadline = time.monotonic() + wait
        while True:
            synced = await self._sync_store()
            if synced or time.monotonic() >= deadline:
                return self.lobby.store_generation
            # Another node rebuilds; its epoch (or its lease running out) ends this.
            await asyncio.sleep(0.05)

    async def _recover(self) -> int:
        return await self.check_store(wait=20.0)

    async def _sync_store(self) -> bool:
        """One sweep, and the rebuild or re-registration it calls for; True when
        this node is on the store's current generation."""
        result = await self.lobby.sweep()
        revived = result.revived
        while len(result.changes) >= 100 or result.more:  # a backlog: keep taking it
            result = await self.lobby.sweep()
            revived = revived or result.revived
        if revived and self.hub.client_count:
            # Other nodes took this one for dead and dropped its sockets.
            self._reconcile_wanted.set()
        if result.epoch is not None and result.epoch == self._epoch:
            return True
        async with self._epoch_lock:
            epoch = result.epoch
            if epoch is None:
                epoch = await self.rebuilder.run(secrets.token_hex(8))
                if epoch is None:
                    return False
            if epoch == self._epoch:
                return True
            if self._epoch is not None:
                clients = [
                    LiveClient(c.player_id, c.name, c.token_hash, c.conn_id, c.session_id)
                    for c in self.hub.clients() if c.player_id is not None
                ]
                rebound = await self.store.rebind(clients, now_ms())
                log.warning("store generation changed: %d local players re-registered", rebound)
            self._epoch = epoch
            self.lobby.store_generation += 1
            return True

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a task stuck in a Redis call that ignores cancellation
            # must not hold the shutdown.
            _, stuck = await asyncio.wait(self._tasks, timeout=5)
            for task in stuck:
                log.error("shutdown: task %s did not stop", task.get_name())
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.registry.remove(), 2)
        # Each step is bounded: a dead Redis or AWS endpoint must not hang shutdown.
        if self._server is not None:
            listener = self.sockets.listener
            assert listener is not None
            listener.close()
            self.sockets.http.close_all()
            await _bounded("closing sockets", listener.wait_closed(), 10)
        self.hub.close()
        await _bounded("dropping this node's address counts", self.ledger.close(), 5)
        await _bounded("closing pub/sub", self.bus.close(), 5)
        if self.reconciler is not None:
            await self.reconciler.close()
        if self.persistence is not None:
            await _bounded("flushing DynamoDB writes", self.persistence.close(), 15)
        await self.lobby.close()
        await _bounded("closing the allocator", self.allocator.close(), 5)
        await _bounded("closing the store", self.store.close(), 5)

    async def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until SIGTERM or SIGINT, then shut down cleanly: sockets closed,
        pending DynamoDB writes flushed (a container's `docker stop` sends SIGTERM).
        `on_ready` is called once the node listens (a --workers supervisor waits for it)."""
        await self.start()
        if on_ready is not None:
            on_ready()
        # Process-wide, so here rather than in start() (tests run nodes in-process):
        # start-up objects (modules, pydantic schemas) never die, so keep them out
        # of the collector's scans, and collect the young generation less often.
        # Churn at 1,000 joins/s showed GC pauses as its p99 outliers.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        install_accept_error_limiter(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        try:
            await stopping.wait()
            await self.drain()
            log.info("shutting down")
        finally:
            await self.stop()


async def _until_reachable(what: str, call: Any, seconds: float) -> None:
    """Start-up waits a bounded time for a dependency (a container's Redis may
    start a moment after the lobby), then gives up with one line, exit code 1."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    delay = 0.1
    warned = False
    while True:
        try:
            await call()
            return
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as err:
            last: Exception = err
        except StartupError:
            raise  # reachable, but wrong (e.g. --redis-buckets): no waiting helps
        except Exception as err:  # botocore's connection errors, and what we cannot retry
            if "AuthenticationError" in type(err).__name__:
                raise StartupError(f"{what}: {err}", 2) from err
            last = err
        left = deadline - loop.time()
        if left <= 0:
            raise StartupError(
                f"{what} unreachable after {seconds:g}s: {type(last).__name__}: {last}", 1
            ) from last
        if not warned:
            log.warning("%s: not reachable yet (%s); retrying for up to %gs", what, last, seconds)
            warned = True
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, 1.0)


def _route(handler: Handler) -> Any:
    """An operator endpoint on the HTTP side of the node's port (lobby.http)."""

    async def route(request: HttpRequest) -> HttpResponse:
        reply = await handler(Call(request.method, request.path, request.query,
                                   request.headers, request.body))
        return HttpResponse(reply.status, reply.body, reply.content_type, list(reply.headers))

    return route


def _time_writes(table: SessionTable, observe: Any) -> None:
    """Observe each successful DynamoDB write's lag (change time to written) from
    outside the write-behind queue, which stays free of metrics code."""
    put = table.put

    def timed_put(rec: Any, *args: Any, **kwargs: Any) -> Any:
        written = put(rec, *args, **kwargs)
        if written and isinstance(rec, dict) and "updated" in rec:
            observe(rec["updated"])
        return written

    table.put = timed_put  # type: ignore[method-assign]


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls_cert and not settings.tls_key:
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise StartupError("--tls-cert and --tls-key go together", 2)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as err:
        raise StartupError(f"--tls-cert/--tls-key: {err}", 2) from err
    return context


def _fd_budget() -> int:
    """Sockets this process can hold: its open-file limit less a reserve for
    Redis, AWS and log files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, soft - 256)


async def _bounded(what: str, aw: Any, seconds: float) -> None:
    try:
        await asyncio.wait_for(aw, seconds)
    except TimeoutError:
        log.error("shutdown: %s took over %.0fs; going on", what, seconds)
    except Exception:
        log.exception("shutdown: %s failed", what)


def _make_allocator(settings: Settings) -> Allocator:
    if settings.fleetiq_group:
        from lobby.allocators.fleetiq import FleetIQAllocator

        log.info("allocating game servers from FleetIQ group %s", settings.fleetiq_group)
        return FleetIQAllocator(
            settings.fleetiq_group, region=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url, client=settings.fleetiq_client,
            max_workers=settings.fleetiq_concurrency,
            claims_per_second=settings.fleetiq_claims_per_second,
            claim_burst=settings.fleetiq_claim_burst,
        )
    log.info("static allocator: every session gets %s", settings.game_server)
    return StaticAllocator(settings.game_server)

