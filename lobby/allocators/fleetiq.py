"""The FleetIQ allocator: each session claims a game server from a GameLift FleetIQ group.

boto3 blocks, so every call runs on this allocator's own thread pool (sized
with the client's connection pool) rather than the loop's default executor,
which other parts of the process share. botocore's retries are off (see
lobby.aws); the retry policy lives here because only here can capacity errors
(final: the group is full) be told apart from transient ones (retry).
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

from lobby.allocators.base import Allocation, NoServerAvailable
from lobby.aws import make_client

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


class FleetIQAllocator:
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
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self.group_name = group_name
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        # Pool as many HTTP connections as threads so no worker waits on the pool.
        self._client = make_client(
            "gamelift",
            region=region,
            endpoint_url=endpoint_url,
            max_pool_connections=max(max_workers, 10),
        )
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fleetiq")
        self._closed = False
        # Metrics: successful claims, retried attempts, allocations that failed.
        self.claims = 0
        self.retries = 0
        self.failures = 0
        self.out_of_capacity = 0

    async def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        fn = getattr(self._client, method)
        result: dict[str, Any] = await loop.run_in_executor(self._executor, lambda: fn(**kwargs))
        return result

    def _backoff(self, attempt: int) -> float:
        # Full jitter: spreads out lobbies that were throttled together.
        return random.uniform(0, min(self.max_delay, self.base_delay * (2 ** (attempt - 1))))

    def _fail(self, session_id: str, reason: str) -> NoServerAvailable:
        self.failures += 1
        return NoServerAvailable(f"session {session_id}: {reason}")

    async def allocate(self, session_id: str, player_ids: list[str]) -> Allocation:
        if self._closed:
            raise self._fail(session_id, "allocator is closed")
        data = encode_game_server_data(session_id, player_ids)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._call(
                    "claim_game_server", GameServerGroupName=self.group_name, GameServerData=data
                )
                break
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
                transient = (
                    code in _THROTTLING_CODES
                    or code in _SERVER_ERROR_CODES
                    or status == 429
                    or status >= 500
                )
                if not transient:
                    logger.error(
                        "ClaimGameServer failed for group %s: %s (HTTP %s) %s",
                        self.group_name, code, status, error.get("Message", ""),
                    )
                    raise self._fail(session_id, f"claim failed: {code}") from exc
                reason = f"{code} (HTTP {status})"
                last_exc: Exception = exc
            except _CONNECTION_ERRORS as exc:
                reason = type(exc).__name__
                last_exc = exc
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

            if attempt >= self.max_attempts:
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

        server = response.get("GameServer") or {}
        server_id = server.get("GameServerId", "")
        endpoint = server.get("ConnectionInfo") or ""
        if not server_id or not endpoint.strip():
            # The claim stands until its TTL lapses; releasing it would only
            # hand the same unreachable server to the next session.
            logger.error(
                "claimed game server %r in group %s has no ConnectionInfo",
                server_id, self.group_name,
            )
            raise self._fail(session_id, f"game server {server_id!r} has no ConnectionInfo")
        self.claims += 1
        logger.info(
            "session %s claimed game server %s (%s) in group %s",
            session_id, server_id, endpoint, self.group_name,
        )
        return Allocation(server_id=server_id, endpoint=endpoint)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Waiting for in-flight calls (bounded by the client's timeouts) in a
        # helper thread keeps the loop responsive while they finish.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        self._client.close()
