"""The FleetIQ allocator: each session claims a game server from a GameLift FleetIQ group,
and the lobby carries the server's whole FleetIQ life (issue 11).

- A claim is marked UTILIZED at once (GameServerData carries the session id):
  FleetIQ's claim lasts 60 s only, and a lapsed claim hands the server to the
  next claimer while the first match still runs.
- A claim whose outcome is unknown (the read timed out, the connection closed
  after the request went out) may have succeeded: before trying again, the
  group is searched for a server claimed with this session's data and that one
  is reused. Claims that land later still are found by `reconcile`, which
  releases every server whose GameServerData names a session that does not use
  it (gone, back in WAITING, or on another server).
- A server is released by deregistering it: FleetIQ allows AVAILABLE -> UTILIZED
  only, and its guide says to deregister a server after its game rather than
  reuse it. The server process learns it from its next heartbeat (404
  SERVER_NOT_REGISTERED) and registers again when it is ready.

The calls go out on the event loop through lobby.aws_json (client="async",
the default): signed and sent in ~30 us of CPU each, where boto3 takes ~1 ms
under the GIL, which made 500 simultaneous starts wait half a second for the
loop (issue 18). client="boto3" runs the boto3 client instead, on this
allocator's own thread pool (sized with the client's connection pool) rather
than the loop's default executor, which other parts of the process share. Both
raise botocore's exceptions, so everything below is the same for either.
botocore's retries are off (see lobby.aws); the retry policy lives here because
only here can capacity errors (final: the group is full) be told apart from
transient ones (retry).

GameLift limits ClaimGameServer to 20 calls a second per account, in bursts of up
to 40 (its "API limits" table). A burst of starts above that is throttled, and after
`max_attempts` quick retries most of it would fail. So a throttled call keeps being
retried, with backoff, for `throttle_wait` seconds: throttling says "later", not
"no". Claims can also be paced here (`claims_per_second`, `claim_burst`: this node's
share of the account's limit; off by default, since quotas can be raised), so that
a burst goes out first come first served instead of being throttled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from lobby import fastjson
from lobby.allocators.base import (
    Allocation,
    AllocatorUnavailable,
    NoServerAvailable,
    ServerBusy,
    ServerLifecycle,
    ServerNotRegistered,
    SessionLookup,
)
from lobby.aws import credentials, make_client
from lobby.aws_json import AwsJsonClient
from lobby.tokenbucket import TokenBucket

logger = logging.getLogger("lobby.fleetiq")

# ClaimGameServer's GameServerData limit in botocore's gamelift model. botocore
# does not enforce max lengths client-side, so exceeding it would only show up
# as an InvalidRequestException from the service.
MAX_GAME_SERVER_DATA = 1024

_THROTTLING_CODES = frozenset(
    {"ThrottlingException", "TooManyRequestsException", "Throttling", "RequestLimitExceeded"}
)
_SERVER_ERROR_CODES = frozenset(
    {"InternalServiceException", "InternalFailure", "ServiceUnavailable"}
)
_CONNECTION_ERRORS = (
    EndpointConnectionError,
    ConnectionClosedError,
    ReadTimeoutError,
    ConnectTimeoutError,
)
# The request may have reached FleetIQ and been carried out: only the answer is lost.
_UNKNOWN_OUTCOME = (ReadTimeoutError, ConnectionClosedError)
# How long after an unknown claim outcome late claims are looked for every second
# (a claim that lands later than FleetIQ's 60 s window has lapsed by itself).
DOUBT_WINDOW_SECONDS = 60.0
RECONCILE_EVERY_SECONDS = 60.0
RECONCILE_IN_DOUBT_SECONDS = 1.0


def session_of(data: str | None) -> str | None:
    """The session id in a GameServerData this lobby wrote, else None."""
    if not data or not data.startswith("{"):
        return None
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    sid = payload.get("session_id") if isinstance(payload, dict) else None
    if not isinstance(sid, str) or not sid or payload.get("session_id_truncated"):
        return None
    return sid


def encode_game_server_data(
    session_id: str, player_ids: list[str], limit: int = MAX_GAME_SERVER_DATA
) -> str:
    """JSON for GameServerData that always fits ``limit`` characters.

    Players are dropped from the end (flagged with ``players_truncated``)
    rather than failing the claim: the game server learns its roster from the
    session anyway, the data is informational.
    """

    def dump(payload: dict[str, Any]) -> str:
        # ensure_ascii keeps characters == bytes, so the limit holds either way.
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=True)

    # The common case, ids in ASCII that fit: orjson writes the same text as
    # `dump` for them, in a tenth of the time.
    full = fastjson.dumps({"session_id": session_id, "players": player_ids})
    if not full.isascii():
        full = dump({"session_id": session_id, "players": player_ids})
    if len(full) <= limit:
        return full

    def truncated(count: int) -> str:
        return dump(
            {"session_id": session_id, "players": player_ids[:count], "players_truncated": True}
        )

    def longest_fit(encode: Callable[[int], str], n: int) -> int:
        # Encoded length grows with the prefix length, so binary search it.
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(encode(mid)) <= limit:
                lo = mid
            else:
                hi = mid - 1
        return lo

    data = truncated(longest_fit(truncated, len(player_ids)))
    if len(data) <= limit:
        return data

    # Only a pathological session id gets here. Cutting the raw string (not
    # its JSON) keeps the result valid JSON.
    def cut_session(count: int) -> str:
        return dump(
            {
                "session_id": session_id[:count],
                "players": [],
                "players_truncated": True,
                "session_id_truncated": True,
            }
        )

    return cut_session(longest_fit(cut_session, len(session_id)))


class FleetIQAllocator(ServerLifecycle):
    def __init__(
        self,
        group_name: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        max_attempts: int = 4,
        base_delay: float = 0.1,
        max_delay: float = 2.0,
        max_workers: int = 16,
        read_timeout: float = 5.0,
        client: str = "async",
        claims_per_second: float = 0.0,
        claim_burst: int = 40,
        throttle_wait: float = 30.0,
    ) -> None:
        """`max_workers`: calls in flight at once (connections of the async
        client; threads and pooled connections of the boto3 one).
        `claims_per_second` 0: claims are not paced."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if claims_per_second < 0 or claim_burst < 1 or throttle_wait < 0:
            raise ValueError("claims_per_second and throttle_wait must be >= 0, "
                             "claim_burst >= 1")
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        if client not in ("async", "boto3"):
            raise ValueError("client must be 'async' or 'boto3'")
        self.group_name = group_name
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.throttle_wait = throttle_wait
        self._claim_pace = _Pace(claims_per_second, claim_burst) if claims_per_second else None
        # Pool as many HTTP connections as threads so no worker waits on the pool.
        self._client = make_client(
            "gamelift",
            region=region,
            endpoint_url=endpoint_url,
            max_pool_connections=max(max_workers, 10),
            read_timeout=read_timeout,
        )
        # The async client takes the boto3 client's model, endpoint and errors.
        self._aws: AwsJsonClient | None = None
        self._executor: ThreadPoolExecutor | None = None
        if client == "async":
            self._aws = AwsJsonClient(self._client, credentials(endpoint_url),
                                      max_connections=max_workers, read_timeout=read_timeout)
        else:
            self._executor = ThreadPoolExecutor(max_workers=max_workers,
                                                thread_name_prefix="fleetiq")
        self._closed = False
        self._allocating: set[str] = set()  # sessions whose claim runs on this node
        self._doubt_until = 0.0  # loop time until which late claims are looked for
        self._last_reconcile = 0.0
        # Metrics: successful claims, retried attempts, allocations that failed.
        self.claims = 0
        self.retries = 0
        self.throttled = 0  # calls GameLift answered with throttling
        self.failures = 0
        self.out_of_capacity = 0
        self.unknown_outcomes = 0  # claims whose answer was lost
        self.recovered = 0  # ...and were found and reused
        self.released = 0  # servers deregistered by the lobby (end of session, orphans)
        self.orphans = 0  # of which found by reconcile

    async def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        if self._aws is not None:
            if self._closed:
                # As the shut-down executor does: handled as an unexpected error.
                raise RuntimeError("the FleetIQ allocator is closed")
            return await self._aws.call(method, **kwargs)
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        fn = getattr(self._client, method)
        result: dict[str, Any] = await loop.run_in_executor(self._executor, lambda: fn(**kwargs))
        return result

    async def _retrying(self, method: str, **kwargs: Any) -> dict[str, Any]:
        """A call that is safe to repeat: transient errors are retried with backoff.
        Raises the last ClientError (or AllocatorUnavailable after the attempts)."""
        attempt = 0
        started = asyncio.get_running_loop().time()
        while True:
            attempt += 1
            try:
                return await self._call(method, GameServerGroupName=self.group_name, **kwargs)
            except ClientError as exc:
                if _throttling(exc):
                    self.throttled += 1
                if not _transient(exc) or (attempt >= self.max_attempts
                                           and not self._wait_out(exc, started)):
                    raise
                reason = _code(exc)
            except _CONNECTION_ERRORS as exc:
                if attempt >= self.max_attempts:
                    raise AllocatorUnavailable(f"{method}: {type(exc).__name__}") from exc
                reason = type(exc).__name__
            except BotoCoreError as exc:
                raise AllocatorUnavailable(f"{method}: {type(exc).__name__}") from exc
            self.retries += 1
            logger.info("%s for group %s: %s; retry %d/%d", method, self.group_name, reason,
                        attempt, self.max_attempts - 1)
            await asyncio.sleep(self._backoff(attempt))

    def _wait_out(self, exc: ClientError, started: float) -> bool:
        """Whether a call throttled after its attempts are used up is tried again:
        for up to throttle_wait seconds since its first attempt."""
        if not _throttling(exc):
            return False
        return asyncio.get_running_loop().time() - started < self.throttle_wait

    def _backoff(self, attempt: int) -> float:
        # Full jitter: spreads out lobbies that were throttled together.
        return random.uniform(0, min(self.max_delay, self.base_delay * (2 ** (attempt - 1))))

    def _fail(self, session_id: str, reason: str) -> NoServerAvailable:
        self.failures += 1
        return NoServerAvailable(f"session {session_id}: {reason}")

    def _doubt(self) -> None:
        self.unknown_outcomes += 1
        loop = asyncio.get_running_loop()
        self._doubt_until = max(self._doubt_until, loop.time() + DOUBT_WINDOW_SECONDS)

    async def allocate(self, session_id: str, player_ids: list[str]) -> Allocation:
        if self._closed:
            raise self._fail(session_id, "allocator is closed")
        self._allocating.add(session_id)
        try:
            return await self._allocate(session_id, player_ids)
        finally:
            self._allocating.discard(session_id)

    async def _allocate(self, session_id: str, player_ids: list[str]) -> Allocation:
        data = encode_game_server_data(session_id, player_ids)
        server = await self._claim(session_id, data)
        server_id = server.get("GameServerId", "")
        endpoint = server.get("ConnectionInfo") or ""
        if not server_id or not endpoint.strip():
            # Unusable: deregistered rather than left claimed, so it is not handed
            # to the next session either (it registers again, fixed or not).
            logger.error(
                "claimed game server %r in group %s has no ConnectionInfo",
                server_id, self.group_name,
            )
            if server_id:
                await self.release(server_id, session_id, "no ConnectionInfo")
            raise self._fail(session_id, f"game server {server_id!r} has no ConnectionInfo")
        # UTILIZED now, not when the match starts: FleetIQ's claim lasts 60 s, and
        # players may take longer than that to connect.
        try:
            await self._retrying("update_game_server", GameServerId=server_id,
                                 UtilizationStatus="UTILIZED", GameServerData=data)
        except (ClientError, AllocatorUnavailable) as exc:
            logger.warning("marking game server %s UTILIZED for session %s failed: %s",
                           server_id, session_id, exc)
            await self.release(server_id, session_id, "could not be marked UTILIZED")
            raise self._fail(session_id, "the claimed server could not be marked UTILIZED"
                             ) from exc
        self.claims += 1
        logger.info(
            "session %s claimed game server %s (%s) in group %s",
            session_id, server_id, endpoint, self.group_name,
        )
        return Allocation(server_id=server_id, endpoint=endpoint)

    async def _claim(self, session_id: str, data: str) -> dict[str, Any]:
        attempt = 0
        started = asyncio.get_running_loop().time()
        while True:
            attempt += 1
            throttled: ClientError | None = None
            try:
                if self._claim_pace is not None:
                    await self._claim_pace.take()
                response = await self._call(
                    "claim_game_server", GameServerGroupName=self.group_name, GameServerData=data
                )
                return response.get("GameServer") or {}
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code = str(error.get("Code", ""))
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
                if code == "OutOfCapacityException":
                    self.out_of_capacity += 1
                    logger.info("no FleetIQ capacity in group %s", self.group_name)
                    raise self._fail(session_id, "no game server available") from exc
                if code == "NotFoundException":
                    logger.error(
                        "FleetIQ game server group %s not found (check configuration): %s",
                        self.group_name, error.get("Message", ""),
                    )
                    raise self._fail(session_id, "game server group not found") from exc
                if not _transient(exc):
                    logger.error(
                        "ClaimGameServer failed for group %s: %s (HTTP %s) %s",
                        self.group_name, code, status, error.get("Message", ""),
                    )
                    raise self._fail(session_id, f"claim failed: {code}") from exc
                reason = f"{code} (HTTP {status})"
                last_exc: Exception = exc
                if _throttling(exc):
                    throttled = exc
                    self.throttled += 1
            except _CONNECTION_ERRORS as exc:
                reason = type(exc).__name__
                last_exc = exc
                if isinstance(exc, _UNKNOWN_OUTCOME):
                    # The claim may have succeeded: look before claiming another.
                    self._doubt()
                    found = await self._find_claim(session_id)
                    if found is not None:
                        self.recovered += 1
                        logger.warning(
                            "ClaimGameServer for session %s: %s, but the claim had succeeded "
                            "(game server %s): reusing it", session_id, reason,
                            found.get("GameServerId"))
                        return found
            except BotoCoreError as exc:
                # e.g. missing credentials or parameter validation: retrying won't help.
                logger.error("ClaimGameServer failed for group %s: %s", self.group_name, exc)
                raise self._fail(session_id, f"claim failed: {type(exc).__name__}") from exc
            except Exception as exc:
                # Includes the executor refusing work once close() has started;
                # the session layer only knows how to handle NoServerAvailable.
                logger.exception(
                    "ClaimGameServer failed unexpectedly for group %s", self.group_name
                )
                raise self._fail(session_id, f"claim failed: {type(exc).__name__}") from exc

            if attempt >= self.max_attempts and not (
                    throttled is not None and self._wait_out(throttled, started)):
                logger.warning(
                    "ClaimGameServer for group %s gave up after %d attempts: %s",
                    self.group_name, attempt, reason,
                )
                raise self._fail(session_id, f"gave up after {attempt} attempts") from last_exc
            delay = self._backoff(attempt)
            self.retries += 1
            logger.info(
                "ClaimGameServer for group %s: %s; retry %d/%d in %.3fs",
                self.group_name, reason, attempt, self.max_attempts - 1, delay,
            )
            await asyncio.sleep(delay)

    async def _list(self) -> list[dict[str, Any]]:
        servers: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Limit": 100}
            if token:
                kwargs["NextToken"] = token
            page = await self._retrying("list_game_servers", **kwargs)
            servers.extend(page.get("GameServers") or [])
            token = page.get("NextToken")
            if not token:
                return servers

    async def _find_claim(self, session_id: str) -> dict[str, Any] | None:
        """A server claimed (or utilized) with this session's GameServerData."""
        try:
            servers = await self._list()
        except (ClientError, AllocatorUnavailable) as exc:
            logger.warning("looking for the claim of session %s failed: %s", session_id, exc)
            return None
        for server in servers:
            held = server.get("ClaimStatus") == "CLAIMED" or (
                server.get("UtilizationStatus") == "UTILIZED")
            if held and session_of(server.get("GameServerData")) == session_id:
                return server
        return None

    # the rest of the server's life -------------------------------------------
    async def release(self, server_id: str, session_id: str, reason: str) -> bool:
        """Deregister `server_id` if it still holds `session_id` (it may already
        have registered again for another match)."""
        try:
            server = (await self._retrying("describe_game_server", GameServerId=server_id)
                      ).get("GameServer") or {}
            if session_of(server.get("GameServerData")) != session_id:
                logger.info("game server %s no longer holds session %s: left alone",
                            server_id, session_id)
                return False
            await self._retrying("deregister_game_server", GameServerId=server_id)
        except ClientError as exc:
            if _code(exc) == "NotFoundException":
                return False  # already gone
            logger.warning("releasing game server %s (session %s) failed: %s",
                           server_id, session_id, exc)
            return False
        except (AllocatorUnavailable, RuntimeError) as exc:
            # RuntimeError: the executor is shut down. reconcile() retries later.
            logger.warning("releasing game server %s (session %s) failed: %s",
                           server_id, session_id, exc)
            return False
        self.released += 1
        logger.info("game server %s deregistered (session %s: %s)", server_id, session_id,
                    reason)
        return True

    async def register_server(self, server_id: str, instance_id: str | None,
                              connection_info: str, data: str | None,
                              lookup: SessionLookup) -> dict[str, Any]:
        if not instance_id:
            raise ValueError("instance_id is required with FleetIQ")
        kwargs: dict[str, Any] = {"GameServerId": server_id, "InstanceId": instance_id,
                                  "ConnectionInfo": connection_info}
        if data is not None:
            kwargs["GameServerData"] = data
        try:
            result = await self._retrying("register_game_server", **kwargs)
        except ClientError as exc:
            if _code(exc) != "ConflictException":
                raise _unavailable("RegisterGameServer", exc) from exc
            # Registered already: a server registers when it is ready for a new
            # match, so an old registration is stale unless a live session uses it.
            try:
                old = (await self._retrying("describe_game_server", GameServerId=server_id)
                       ).get("GameServer") or {}
            except ClientError as exc2:
                raise _unavailable("DescribeGameServer", exc2) from exc2
            sid = session_of(old.get("GameServerData"))
            if sid is not None:
                holder = await lookup(sid)
                if holder is not None and holder[1] == server_id:
                    raise ServerBusy(f"game server {server_id} hosts live session {sid}"
                                     ) from None
            try:
                await self._retrying("deregister_game_server", GameServerId=server_id)
                result = await self._retrying("register_game_server", **kwargs)
            except ClientError as exc2:
                raise _unavailable("RegisterGameServer", exc2) from exc2
        server = result.get("GameServer") or {}
        logger.info("game server %s registered (%s) in group %s", server_id, connection_info,
                    self.group_name)
        return {"server_id": server_id, "fleetiq": True,
                "utilization": server.get("UtilizationStatus", "AVAILABLE")}

    async def heartbeat(self, server_id: str) -> None:
        try:
            await self._retrying("update_game_server", GameServerId=server_id,
                                 HealthCheck="HEALTHY")
        except ClientError as exc:
            if _code(exc) == "NotFoundException":
                raise ServerNotRegistered(server_id) from None
            raise _unavailable("UpdateGameServer", exc) from exc

    async def deregister_server(self, server_id: str) -> None:
        try:
            await self._retrying("deregister_game_server", GameServerId=server_id)
        except ClientError as exc:
            if _code(exc) != "NotFoundException":
                raise _unavailable("DeregisterGameServer", exc) from exc

    def reconcile_interval(self) -> float | None:
        loop = asyncio.get_running_loop()
        every = (RECONCILE_IN_DOUBT_SECONDS if loop.time() < self._doubt_until
                 else RECONCILE_EVERY_SECONDS)
        return max(0.0, self._last_reconcile + every - loop.time())

    async def reconcile(self, lookup: SessionLookup) -> int:
        """Release servers held for a session that does not use them: claims that
        landed after their answer was lost, and ends whose release failed."""
        self._last_reconcile = asyncio.get_running_loop().time()
        try:
            servers = await self._list()
        except (ClientError, AllocatorUnavailable) as exc:
            logger.warning("FleetIQ reconciliation: listing group %s failed: %s",
                           self.group_name, exc)
            return 0
        released = 0
        for server in servers:
            held = server.get("ClaimStatus") == "CLAIMED" or (
                server.get("UtilizationStatus") == "UTILIZED")
            sid = session_of(server.get("GameServerData"))
            if not held or sid is None or sid in self._allocating:
                continue
            holder = await lookup(sid)
            server_id = server["GameServerId"]
            if holder is not None:
                state, uses = holder
                # CONNECTING without a server: its claim is running (maybe on another node).
                if uses == server_id or (state == "CONNECTING" and uses is None):
                    continue
            self.orphans += 1
            logger.warning("game server %s is held for session %s, which does not use it: "
                           "releasing it", server_id, sid)
            if await self.release(server_id, sid, "orphaned claim"):
                released += 1
        return released

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._aws is not None:
            await self._aws.close()
        if self._executor is not None:
            # Waiting for in-flight calls (bounded by the client's timeouts) in a
            # helper thread keeps the loop responsive while they finish.
            await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        self._client.close()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class _Pace:
    """Calls let through `rate` a second (`burst` at once), in the order they asked."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate, self._burst = rate, burst
        self._bucket: TokenBucket | None = None  # made on the loop, on its clock

    async def take(self) -> None:
        loop = asyncio.get_running_loop()
        if self._bucket is None:
            self._bucket = TokenBucket(self._rate, self._burst, loop.time())
        wait = self._bucket.reserve(loop.time())
        if wait:
            await asyncio.sleep(wait)


def _throttling(exc: ClientError) -> bool:
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return _code(exc) in _THROTTLING_CODES or status == 429


def _transient(exc: ClientError) -> bool:
    code = _code(exc)
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return (code in _THROTTLING_CODES or code in _SERVER_ERROR_CODES
            or status == 429 or status >= 500)


def _unavailable(op: str, exc: ClientError) -> AllocatorUnavailable:
    error = exc.response.get("Error", {})
    return AllocatorUnavailable(f"{op}: {error.get('Code', '')} {error.get('Message', '')}")
