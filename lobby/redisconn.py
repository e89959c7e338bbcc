"""The node's Redis client, built from its settings, for each kind of deployment.

- One Redis, `--redis-url redis://HOST:6379/0`: `redis.asyncio.Redis` on a
  `BlockingConnectionPool` (a burst waits for one of its connections, up to 10 s).
- Redis Cluster, `--redis-cluster-url redis://HOST:PORT` or a `redis+cluster://` URL
  (in either flag) naming one or more startup nodes, `redis+cluster://h1:p1,h2:p2`:
  a `BoundedRedisCluster`, redis-py's `redis.asyncio.cluster.RedisCluster` (it follows
  MOVED and ASK, and reloads the slot map after a reshard or failover) with a
  semaphore in front of every command and pipeline. redis-py's cluster pool raises
  `MaxConnectionsError` at its limit instead of waiting, so the semaphore is what makes
  a burst wait. A cluster has only database 0: a URL ending in /N (N > 0) is refused.
- Sentinel, `--redis-sentinel HOST:PORT,... --redis-sentinel-master NAME`:
  `redis.asyncio.sentinel.Sentinel(...).master_for(NAME)` on a blocking pool; every new
  connection asks the sentinels where the master is, so after a failover the next
  command (retried on a fresh connection) goes to the promoted replica. Replication is
  asynchronous: a failover can lose the last writes (treat it like a partial Redis loss).

For the store and the bus:
- `is_cluster(client)`: whether keys must be laid out by slot (every script's KEYS in
  one slot, declared; redis-py refuses a multi-slot EVAL client-side).
- `await pubsub(client)`: on one Redis or Sentinel a plain `PubSub`; on a cluster redis-py's
  `ClusterPubSub`, which is sharded pub/sub: `await ps.ssubscribe(channel, ...)`,
  `await ps.sunsubscribe(...)`, `await ps.get_sharded_message(timeout=...)` (it polls
  one connection per master in turn, so a reader per master reads better), published
  with `SPUBLISH` (`client.spublish(channel, data)`, or from a script whose keys are in
  the channel's slot). It re-subscribes by itself after slot moves. Classic
  SUBSCRIBE/PUBLISH work on a cluster too, but each PUBLISH is copied to every master.
- `primaries(client)`: the masters of a cluster (`RedisCluster.get_primaries()`), e.g.
  to pipeline one listing request per master; `[]` otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, ClusterPubSub, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

from lobby.config import Settings, StartupError
from lobby.store.link import Link

Kind = Literal["single", "cluster", "sentinel"]
RedisClient = aioredis.Redis | RedisCluster

MAX_CONNECTIONS = 64  # per node process (per master, on a cluster)
WAIT_SECONDS = 10.0  # a command waits this long for a free connection, then fails
# Connections per master beyond the command limit: each ClusterPubSub holds one per
# master from the same pool (the bus has one; headroom for a reconnect overlapping).
PUBSUB_RESERVE = 4
CLOSED_WRITER_RETRIES = 5  # see BoundedRedisCluster.execute_command
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # -> TLS
SINGLE_SCHEMES = ("redis", "rediss", "unix")


# A pooled connection found dead (Redis restarted, master failed over) is retried
# on a fresh one instead of failing the player's request (the store's link too).
RETRIES = 3


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=0.5, base=0.02)


def _retry() -> dict[str, Any]:
    return {"retry": Retry(_backoff(), RETRIES),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError]}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where the node's Redis is, checked: one of the three kinds."""

    kind: Kind
    flag: str  # the flag (and variable) that named it, for messages
    url: str | None = None  # single
    nodes: tuple[tuple[str, int], ...] = ()  # cluster startup nodes, or the sentinels
    master: str | None = None  # sentinel: the monitored master's name
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    def describe(self) -> str:
        """For logs: no credentials."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.nodes)
        if self.kind == "single":
            return f"Redis at {_redact(self.url)}"
        if self.kind == "cluster":
            return f"Redis Cluster via {hosts}{' (TLS)' if self.tls else ''}"
        return f"Redis master {self.master!r} via sentinels {hosts}"


def _redact(url: str | None) -> str:
    if not url or "@" not in url:
        return url or ""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def env_name(flag: str) -> str:
    """A flag's LOBBY_* variable (lobby/cli.py's rule)."""
    return "LOBBY_" + flag.lstrip("-").upper().replace("-", "_")


def _bad(flag: str, message: str) -> StartupError:
    return StartupError(f"{flag} ({env_name(flag)}): {message}", 2)


def _host_port(flag: str, item: str, default_port: int) -> tuple[str, int]:
    host, sep, port = item.strip().rpartition(":")
    if not sep:
        host, port = item.strip(), str(default_port)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 0 < int(port) <= 65535 or any(
            c.isspace() or c in "/@?#" for c in host):
        raise _bad(flag, f"{item.strip()!r} is not HOST:PORT")
    return host, int(port)


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(flag: str, url: str) -> RedisTarget:
    """`redis+cluster://[user:pass@]h:p[,h:p...][/0]` (or redis://, rediss://)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in (*CLUSTER_SCHEMES, "redis", "rediss"):
        raise _bad(flag, "must be a URL such as redis+cluster://HOST:PORT[,HOST:PORT...] "
                         f"(schemes: redis+cluster://, rediss+cluster://, redis://, "
                         f"rediss://), not {_redact(url)!r}")
    tls = CLUSTER_SCHEMES.get(scheme, scheme == "rediss")
    netloc, _, path = rest.partition("/")
    if "?" in netloc or "#" in netloc or "?" in path or "#" in path:
        raise _bad(flag, "options in the URL (?...) are not supported on a cluster")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    db = path.strip("/")
    if db not in ("", "0"):
        raise _bad(flag, f"a Redis Cluster has only database 0 (SELECT is not allowed in "
                         f"cluster mode): drop the /{db} from {_redact(url)!r}")
    if not hosts:
        raise _bad(flag, f"no HOST:PORT in {_redact(url)!r}")
    nodes = tuple(_host_port(flag, item, 6379) for item in hosts.split(","))
    return RedisTarget("cluster", flag, nodes=nodes, username=username,
                       password=password, tls=tls)


def target(settings: Settings) -> RedisTarget | None:
    """The Redis deployment the settings name (None: embedded mode); a clear error
    (exit 2) for flags that conflict or do not go together."""
    given = [flag for flag, value in (
        ("--redis-url", settings.redis_url),
        ("--redis-cluster-url", settings.redis_cluster_url),
        ("--redis-sentinel", settings.redis_sentinel)) if value]
    if len(given) > 1:
        raise StartupError(
            f"{' and '.join(f'{f} ({env_name(f)})' for f in given)} name different Redis "
            "deployments: give one (--redis-url: one Redis; --redis-cluster-url: a "
            "Redis Cluster; --redis-sentinel with --redis-sentinel-master: Sentinel)", 2)
    if settings.redis_sentinel_master and not settings.redis_sentinel:
        raise _bad("--redis-sentinel-master", "needs --redis-sentinel HOST:PORT,... "
                                              "(the sentinels to ask for that master)")
    if settings.redis_url:
        if is_cluster_url(settings.redis_url):
            return parse_cluster_url("--redis-url", settings.redis_url)
        return RedisTarget("single", "--redis-url", url=settings.redis_url)
    if settings.redis_cluster_url:
        return parse_cluster_url("--redis-cluster-url", settings.redis_cluster_url)
    if settings.redis_sentinel:
        if not settings.redis_sentinel_master:
            raise _bad("--redis-sentinel", "needs --redis-sentinel-master NAME (the "
                                           "name in the sentinels' `sentinel monitor`)")
        items = [i for i in settings.redis_sentinel.split(",") if i.strip()]
        if not items:
            raise _bad("--redis-sentinel", "no HOST:PORT given")
        nodes = tuple(_host_port("--redis-sentinel", i, 26379) for i in items)
        return RedisTarget("sentinel", "--redis-sentinel", nodes=nodes,
                           master=settings.redis_sentinel_master)
    return None


# Set while a task holds one of a BoundedRedisCluster's permits: redis-py re-sends a
# pipeline's redirected commands one by one through the client, inside the pipeline's
# permit, and must not wait for a second one (a full gate would never open).
_HOLDING: ContextVar[bool] = ContextVar("lobby_redis_permit", default=False)


class BoundedRedisCluster(RedisCluster):
    """RedisCluster whose commands and pipelines wait for one of `max_concurrency`
    permits: each holds at most one connection per master at a time, so no master's
    pool (max_concurrency + PUBSUB_RESERVE) ever runs out."""

    def __init__(self, *args: Any, max_concurrency: int = MAX_CONNECTIONS,
                 wait_seconds: float = WAIT_SECONDS, **kwargs: Any) -> None:
        kwargs.setdefault("max_connections", max_concurrency + PUBSUB_RESERVE)
        super().__init__(*args, **kwargs)
        self.max_concurrency = max_concurrency
        self.wait_seconds = wait_seconds
        self._gate = asyncio.Semaphore(max_concurrency)
        self.in_use = 0  # permits held now (commands or pipelines in flight)
        self.waited = 0  # commands that found every permit taken and waited

    @contextlib.asynccontextmanager
    async def permit(self) -> AsyncIterator[None]:
        if _HOLDING.get():
            yield
            return
        if self._gate.locked():
            self.waited += 1
        try:
            async with asyncio.timeout(self.wait_seconds):
                await self._gate.acquire()
        except TimeoutError:
            raise RedisConnectionError(
                f"no Redis Cluster connection free within {self.wait_seconds:g}s "
                f"({self.max_concurrency} commands in flight)") from None
        token = _HOLDING.set(True)
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
            _HOLDING.reset(token)
            self._gate.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.permit():
            for attempt in range(CLOSED_WRITER_RETRIES):
                try:
                    return await super().execute_command(*args, **kwargs)
                except (AttributeError, TypeError) as exc:
                    # redis-py 8.1 (redis/redis-py#4287, #3546): a write on a
                    # connection closed under it (the cluster reconnecting after a
                    # slot moved or a master failed) raises this instead of
                    # ConnectionError, before anything is sent: safe to send again.
                    if "NoneType" not in str(exc) or attempt == CLOSED_WRITER_RETRIES - 1:
                        raise
                    await asyncio.sleep(0.02 * (attempt + 1))
            raise AssertionError("unreachable")

    def pipeline(self, transaction: Any | None = None,
                 shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _BoundedClusterPipeline(self, transaction)


class _BoundedClusterPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True,
                      allow_redirections: bool = True) -> list[Any]:
        client = self.cluster_client
        assert isinstance(client, BoundedRedisCluster)
        async with client.permit():
            return await super().execute(raise_on_error, allow_redirections)


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The sentinel-managed pool with the single-Redis pool's waiting at its limit
    (redis-py's own SentinelConnectionPool raises at it, like the cluster's)."""


class _SentinelMaster(aioredis.Redis):
    """The master client; closing it closes the links to the sentinels too."""

    sentinel: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel is not None:
            for client in self.sentinel.sentinels:
                await client.aclose()


def link(where: RedisTarget, client_name: str | None = None) -> Link | None:
    """One Redis over plain TCP: the multiplexed connection the store's script calls
    use (lobby.store.link). None for a cluster, a Sentinel, TLS or a Unix socket,
    which keep redis-py's own connections."""
    if where.kind != "single" or where.url is None:
        return None
    pool = aioredis.ConnectionPool.from_url(where.url)
    kw = pool.connection_kwargs
    if pool.connection_class is not aioredis.Connection or "host" not in kw:
        return None
    setup: list[tuple[Any, ...]] = []
    if kw.get("password"):
        setup.append(("AUTH", *([kw["username"]] if kw.get("username") else []),
                      kw["password"]))
    if kw.get("db"):
        setup.append(("SELECT", kw["db"]))
    if client_name:
        setup.append(("CLIENT", "SETNAME", client_name))
    return Link(kw["host"], int(kw.get("port", 6379)), setup, retries=RETRIES,
                backoff=_backoff())


def connect(where: RedisTarget, max_connections: int = MAX_CONNECTIONS,
            client_name: str | None = None) -> RedisClient:
    """A client for the target (no I/O yet: the first command connects). Its
    connections carry `client_name` (CLIENT LIST shows which node holds which)."""
    if where.kind == "single":
        assert where.url is not None
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                where.url, max_connections=max_connections, timeout=WAIT_SECONDS,
                socket_connect_timeout=2, client_name=client_name, **_retry())
        except ValueError as err:
            raise _bad(where.flag, str(err)) from err
        return aioredis.Redis(connection_pool=pool)
    if where.kind == "cluster":
        return BoundedRedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in where.nodes],
            max_concurrency=max_connections, username=where.username,
            password=where.password, ssl=where.tls, socket_connect_timeout=2,
            client_name=client_name)
    assert where.master is not None
    sentinel = Sentinel(list(where.nodes), socket_connect_timeout=2,
                        sentinel_kwargs={"socket_connect_timeout": 2, "socket_timeout": 2})
    master = sentinel.master_for(
        where.master, redis_class=_SentinelMaster, connection_pool_class=_BlockingSentinelPool,
        max_connections=max_connections, timeout=WAIT_SECONDS, client_name=client_name,
        **_retry())
    assert isinstance(master, _SentinelMaster)
    master.sentinel = sentinel
    return master


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)


async def pubsub(client: RedisClient, **kwargs: Any) -> PubSub | ClusterPubSub:
    """Sharded (ClusterPubSub) on a cluster; plain PubSub otherwise. Async: a cluster
    client must have loaded its slot map before ssubscribe can find a channel's master."""
    if isinstance(client, RedisCluster):
        await client.initialize()
    return client.pubsub(**kwargs)


def primaries(client: RedisClient) -> list[ClusterNode]:
    return client.get_primaries() if isinstance(client, RedisCluster) else []
