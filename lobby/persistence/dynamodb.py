"""Sessions persisted to DynamoDB, written behind the hot path.

Redis is the source of truth while a session lives; DynamoDB keeps a durable
copy so that a lost Redis can be rebuilt (`load_live_records`) and ended
sessions stay inspectable for a while. Players must never wait for DynamoDB, so
the lobby hands each changed record to `PersistenceQueue.submit`, which returns
at once; worker tasks write in the background through `SessionTable.put`.

Write ordering. Every item carries the ordering key (created_at, ended, version):

* `created_at` first: if a session id is ever reused, the newer incarnation
  wins over any late write of the old one, whatever their versions.
* then ENDED beats live: an end-write is terminal for its incarnation. A live
  write never replaces an ENDED item, even one of a higher version, because a
  resurrected session in DynamoDB would be brought back to life by recovery;
  a late end-write built from a slightly older snapshot still ends the session.
* then `version` (`SessionRecord["v"]`): a strictly higher version wins.

`SessionTable.put` enforces this with a conditional PutItem (so concurrent
lobby processes cannot regress an item); `PersistenceQueue` applies the same
key when it coalesces pending writes, so it does not waste calls that would lose.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    ParamValidationError,
)

from lobby.aws import make_client
from lobby.session import LIVE_STATES, SessionRecord

log = logging.getLogger(__name__)

ENDED = "ENDED"
DAY_S = 86_400

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()

# Error codes DynamoDB (or its front end) returns for capacity and transient
# trouble; everything else (validation, missing table, access denied) will fail
# the same way on every attempt, so it is not retried.
_RETRYABLE_CODES = frozenset({
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "TransactionConflictException",
    "LimitExceededException",
})


def _seconds(ms: int) -> Decimal:
    # Decimal keeps the millisecond exactly (a float would not round-trip and
    # boto3's serializer refuses floats anyway).
    return Decimal(int(ms)) / Decimal(1000)


def _plain(value: Any) -> Any:
    """DynamoDB's Decimals (and sets) as the plain types the rest of the code uses."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return {_plain(v) for v in value}
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return value


def _decode_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _plain(_deserializer.deserialize(v)) for k, v in item.items()}


# Errors the request itself causes: the same item is refused the same way on
# every attempt, so retrying it could only block a worker forever.
_PERMANENT_CODES = frozenset({"ValidationException", "SerializationException"})


def is_permanent(exc: BaseException) -> bool:
    """An error no retry of the same write can clear (everything else is retried)."""
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code") in _PERMANENT_CODES
    if isinstance(exc, ParamValidationError):
        return True
    # botocore's own errors (connections, timeouts, credentials) can clear;
    # anything else is a bug of ours that the same record would hit again.
    return not isinstance(exc, BotoCoreError)


def is_retryable(exc: BaseException) -> bool:
    """Throttling, 5xx and connection trouble: worth another attempt after a pause."""
    if isinstance(exc, ConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        if err.get("Code") in _RETRYABLE_CODES:
            return True
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return isinstance(status, int) and status >= 500
    return False


class SessionTable:
    """The `lobby_sessions` table, through a blocking boto3 client.

    Every method blocks on the network: call them from a thread pool, never
    from the event loop. The low-level client (not the resource) is used
    because clients are thread-safe and one is shared by all pool threads.
    """

    def __init__(
        self,
        table_name: str = "lobby_sessions",
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        waiting_ttl_s: int = DAY_S,
        in_progress_ttl_s: int = 2 * DAY_S,
        ended_ttl_s: int = 7 * DAY_S,
        client: Any = None,
    ) -> None:
        self.table_name = table_name
        self.waiting_ttl_s = waiting_ttl_s
        self.in_progress_ttl_s = in_progress_ttl_s
        self.ended_ttl_s = ended_ttl_s
        self.client: Any = client or make_client(
            "dynamodb", region=region, endpoint_url=endpoint_url
        )

    # -- schema ---------------------------------------------------------------

    def init_table(self, *, wait_delay_s: int = 1, wait_max_attempts: int = 120) -> str:
        """Create the table if missing, wait until ACTIVE, enable TTL. Idempotent."""
        done: list[str] = []
        try:
            self.client.describe_table(TableName=self.table_name)
            done.append(f"table {self.table_name} exists")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
            try:
                self.client.create_table(
                    TableName=self.table_name,
                    AttributeDefinitions=[{"AttributeName": "session_id", "AttributeType": "S"}],
                    KeySchema=[{"AttributeName": "session_id", "KeyType": "HASH"}],
                    BillingMode="PAY_PER_REQUEST",
                )
                done.append(f"created table {self.table_name}")
            except ClientError as exc2:
                # Another lobby process created it between our describe and create.
                if exc2.response.get("Error", {}).get("Code") != "ResourceInUseException":
                    raise
                done.append(f"table {self.table_name} exists")
        # The waiter's default 20 s delay would stall start-up on real AWS.
        self.client.get_waiter("table_exists").wait(
            TableName=self.table_name,
            WaiterConfig={"Delay": wait_delay_s, "MaxAttempts": wait_max_attempts},
        )
        ttl = self.client.describe_time_to_live(TableName=self.table_name)
        desc = ttl.get("TimeToLiveDescription", {})
        status, attr = desc.get("TimeToLiveStatus"), desc.get("AttributeName")
        if status in ("ENABLED", "ENABLING") and attr == "expires_at":
            done.append("TTL already on expires_at")
        elif status in ("ENABLED", "ENABLING"):
            # DynamoDB allows one TTL attribute; switching it is an operator's call.
            raise RuntimeError(
                f"table {self.table_name} has TTL on {attr!r}, expected 'expires_at'"
            )
        else:
            self.client.update_time_to_live(
                TableName=self.table_name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"},
            )
            done.append("enabled TTL on expires_at")
        return "; ".join(done)

    # -- items ----------------------------------------------------------------

    def item_from_record(
        self,
        rec: SessionRecord | Mapping[str, Any],
        *,
        ended_reason: str | None = None,
        now_ms: int | None = None,
    ) -> dict[str, Any]:
        """The item (plain Python values, Decimals for numbers) for one record.

        For an ENDED item `updated_at` is the time of the end (`now_ms`, or the
        record's own `updated` if later), so the 7-day retention counts from
        the end, not from the last change (an idle-timed-out room may not have
        changed for a long time).
        """
        updated_ms = int(rec["updated"])
        if ended_reason is not None:
            state = ENDED
            if now_ms is None:
                now_ms = int(time.time() * 1000)
            updated_ms = max(updated_ms, int(now_ms))
            ttl_s = self.ended_ttl_s
        else:
            state = str(rec["state"])
            ttl_s = self.in_progress_ttl_s if state == "IN_PROGRESS" else self.waiting_ttl_s
        members = rec["members"]
        item: dict[str, Any] = {
            "session_id": rec["id"],
            "name": rec["name"],
            "host_id": rec["host"],
            "session_state": state,
            "player_count": len(members),
            "max_players": int(rec["max"]),
            "connected_players": [m["id"] for m in members],
            "server_id": rec["server_id"],
            "server_endpoint": rec["endpoint"],
            "created_at": _seconds(rec["created"]),
            "updated_at": _seconds(updated_ms),
            "version": int(rec["v"]),
            "expires_at": updated_ms // 1000 + ttl_s,
            # The whole record, salt/hash and join times included, so recovery
            # rebuilds Redis exactly instead of re-deriving it from the columns.
            "record": json.dumps(rec, separators=(",", ":")),
        }
        if ended_reason is not None:
            item["end_reason"] = ended_reason
        return item

    def put(
        self,
        rec: SessionRecord | Mapping[str, Any],
        *,
        ended_reason: str | None = None,
        now_ms: int | None = None,
    ) -> bool:
        """Write the record unless the stored item is newer; True when written.

        Newer means a greater (created_at, ended, version) key (see the module
        docstring): a live write of version v loses to an ENDED item of any
        version; an ENDED write of version v wins over any live item and over
        an ENDED item of a lower version. An equal key loses, so a retried
        write that had in fact landed reports False (stale), which is harmless.

        Returns False when the condition failed (not an error). Raises
        botocore errors for everything else; `is_retryable` sorts them.
        """
        item = self.item_from_record(rec, ended_reason=ended_reason, now_ms=now_ms)
        if ended_reason is None:
            cond = (
                "attribute_not_exists(session_id) OR created_at < :c"
                " OR (created_at = :c AND session_state <> :ended AND version < :v)"
            )
        else:
            cond = (
                "attribute_not_exists(session_id) OR created_at < :c"
                " OR (created_at = :c AND (session_state <> :ended OR version < :v))"
            )
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item={k: _serializer.serialize(v) for k, v in item.items()},
                ConditionExpression=cond,
                ExpressionAttributeValues={
                    ":c": _serializer.serialize(item["created_at"]),
                    ":v": _serializer.serialize(item["version"]),
                    ":ended": {"S": ENDED},
                },
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def get(self, session_id: str) -> dict[str, Any] | None:
        """The stored item as plain Python values (ints/floats, lists, None), or None."""
        resp = self.client.get_item(
            TableName=self.table_name,
            Key={"session_id": {"S": session_id}},
            ConsistentRead=True,
        )
        item = resp.get("Item")
        return _decode_item(item) if item else None

    def load_live_records(self, *, now_s: float | None = None) -> list[SessionRecord]:
        """Every live (WAITING/CONNECTING/IN_PROGRESS) session, as its SessionRecord.

        A full Scan with a filter: it reads the whole table, but it runs only
        when Redis was lost, so an index kept up on every write isn't worth it.
        Items past `expires_at` are skipped because DynamoDB's TTL deletion is
        lazy (it can lag by days) and such sessions were abandoned.
        """
        if now_s is None:
            now_s = time.time()
        states = {f":s{i}": {"S": s} for i, s in enumerate(LIVE_STATES)}
        values: dict[str, Any] = {**states, ":now": {"N": str(int(now_s))}}
        paginator = self.client.get_paginator("scan")
        out: list[SessionRecord] = []
        for page in paginator.paginate(
            TableName=self.table_name,
            FilterExpression=(
                f"session_state IN ({', '.join(states)}) AND expires_at > :now"
            ),
            ProjectionExpression="#r",
            ExpressionAttributeNames={"#r": "record"},
            ExpressionAttributeValues=values,
            ConsistentRead=True,
        ):
            for item in page.get("Items", []):
                out.append(cast(SessionRecord, json.loads(item["record"]["S"])))
        return out

    def scan_keys(self) -> dict[str, StoredKey]:
        """Every item's ordering key, for reconciling the table with the store
        (a Scan of the few key attributes only, not of the records)."""
        paginator = self.client.get_paginator("scan")
        out: dict[str, StoredKey] = {}
        for page in paginator.paginate(
            TableName=self.table_name,
            ProjectionExpression="session_id, created_at, session_state, version, expires_at",
            ConsistentRead=True,
        ):
            for item in page.get("Items", []):
                created = int(Decimal(item["created_at"]["N"]) * 1000)
                ended = int(item["session_state"]["S"] == ENDED)
                out[item["session_id"]["S"]] = StoredKey(
                    (created, ended, int(item["version"]["N"])), int(item["expires_at"]["N"]))
        return out


@dataclass(slots=True, frozen=True)
class StoredKey:
    """The ordering key of a stored item (see the module docstring), and its expiry."""

    key: tuple[int, int, int]  # (created_at ms, ended, version)
    expires_at: int

    @property
    def ended(self) -> bool:
        return bool(self.key[1])


@dataclass(slots=True)
class _Write:
    rec: Mapping[str, Any]
    ended_reason: str | None
    since: float  # when the oldest change this write carries was submitted (monotonic)

    @property
    def session_id(self) -> str:
        return str(self.rec["id"])

    def key(self) -> tuple[int, int, int]:
        # Same order as SessionTable.put's condition.
        return (int(self.rec["created"]), int(self.ended_reason is not None), int(self.rec["v"]))


class PersistenceQueue:
    """Asyncio write-behind queue: `submit` never waits for DynamoDB.

    Per session only the newest pending write waits (coalescing), and a session
    is never in flight twice at once: its next write waits until the current
    one finishes, so a later version cannot land before an earlier one.

    Never give up the newest version. A write that fails for a reason that can
    clear (connection refused or cut, timeouts, throttling, 5xx, but also a
    missing table or expired credentials, which an operator fixes) stays dirty
    and is retried with capped exponential backoff and full jitter for as long
    as the trouble lasts; meanwhile newer submits of that session coalesce into
    it, so the write that finally lands is the newest one, an ENDED one
    included. Only an error the item itself causes (DynamoDB's validation of
    the request) is given up: retrying the same item can never succeed. While
    DynamoDB fails, the workers are the only ones probing it (one attempt per
    worker per backoff), so an outage costs a handful of calls a second.

    After an outage (a success following failures) `on_recovered` is called
    with how long writes had been failing:
    the node then reconciles what is live against the table, which repairs
    what no queue holds any more (a node that stopped during the outage).

    Overflow policy: when more than `max_pending` distinct sessions wait, the
    submit is still accepted, and counted (`overflow`) and logged (at most once
    a second). Dropping would lose durability and blocking would hand DynamoDB
    latency to players; since pending writes coalesce, memory grows at most with
    the number of sessions, which the lobby holds in memory anyway. Overflow
    means DynamoDB is behind, which is what the metric and log are for.

    `metrics`: written (PutItem succeeded), stale (condition failed: a newer or
    equal write was already stored), coalesced (replaced before being sent by a
    newer submit of the same session, or older than the one already pending),
    retries (failed attempts that will be retried), gave_up (writes dropped:
    refused by validation, or unwritten at close), overflow, pending (sessions
    waiting or in flight), oldest_unwritten_age_s (how long the oldest change
    not yet in DynamoDB has waited), failing_for_s (how long writes have been
    failing; 0 when the last attempt succeeded), outages (failure runs that
    ended in a success). Every submit ends up counted exactly once in written,
    stale, coalesced or gave_up.
    """

    def __init__(
        self,
        table: SessionTable,
        *,
        max_pending: int = 10_000,
        workers: int = 4,
        base_delay: float = 0.05,
        max_delay: float = 2.0,
        on_recovered: Callable[[float], None] | None = None,
    ) -> None:
        self.table = table
        self.max_pending = max_pending
        self.workers = workers
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.on_recovered = on_recovered
        self._counts: dict[str, int] = {
            "written": 0, "stale": 0, "coalesced": 0, "retries": 0, "gave_up": 0, "overflow": 0,
            "outages": 0,
        }
        # Insertion-ordered: the ready queue hands out the longest-waiting first,
        # and the first entry carries the oldest change of all that are pending
        # (an entry's `since` is its insertion time and survives coalescing).
        self._pending: dict[str, _Write] = {}
        self._inflight: dict[str, _Write] = {}
        # Invariant: a session id is in _ready at most once, and only while it
        # is pending and not in flight.
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._last_overflow_log = 0.0
        self._failing_since: float | None = None
        self._last_failure_log = 0.0

    # -- observation ----------------------------------------------------------

    @property
    def pending(self) -> int:
        """Queue depth: sessions with a change not yet in DynamoDB."""
        return len(self._pending) + len(self._inflight)

    @property
    def gave_up(self) -> int:
        return self._counts["gave_up"]

    def oldest_unwritten_age(self) -> float:
        """Seconds the oldest change not yet in DynamoDB has waited (0 if none)."""
        oldest = [w.since for w in self._inflight.values()]
        first = next(iter(self._pending.values()), None)
        if first is not None:
            oldest.append(first.since)
        return max(0.0, time.monotonic() - min(oldest)) if oldest else 0.0

    def failing_for(self) -> float:
        """Seconds since writes started failing; 0 while they succeed."""
        if self._failing_since is None:
            return 0.0
        return time.monotonic() - self._failing_since

    @property
    def metrics(self) -> dict[str, Any]:
        return {
            **self._counts, "pending": self.pending,
            "oldest_unwritten_age_s": round(self.oldest_unwritten_age(), 3),
            "failing_for_s": round(self.failing_for(), 3),
        }

    # -- producer side --------------------------------------------------------

    def submit(
        self, rec: SessionRecord | Mapping[str, Any], ended_reason: str | None = None
    ) -> None:
        """Queue a write of this record; O(1), never blocks, never raises for I/O.

        The record is copied (JSON-deep) so later in-place edits by the caller
        do not change what gets written.
        """
        write = _Write(json.loads(json.dumps(rec)), ended_reason, time.monotonic())
        sid = write.session_id
        if self._closed:
            self._counts["gave_up"] += 1
            log.error(
                "dynamodb write of session %s (version %s) submitted after close: not written",
                sid, write.rec["v"],
            )
            return
        current = self._pending.get(sid)
        if current is not None:
            if write.key() > current.key():
                write.since = current.since  # the older change is unwritten too
                self._pending[sid] = write
            self._counts["coalesced"] += 1
            return
        if len(self._pending) >= self.max_pending:
            self._counts["overflow"] += 1
            now = time.monotonic()
            if now - self._last_overflow_log >= 1.0:
                self._last_overflow_log = now
                log.warning(
                    "dynamodb write-behind queue over %d pending sessions (%d overflows so far);"
                    " accepting session %s anyway",
                    self.max_pending, self._counts["overflow"], sid,
                )
        self._pending[sid] = write
        self._idle.clear()
        if sid not in self._inflight:
            self._ready.put_nowait(sid)

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        if self._tasks:
            return
        self._executor = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="dynamodb-put"
        )
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"dynamodb-writer-{i}")
            for i in range(self.workers)
        ]

    # A timeout parameter (not asyncio.timeout at the call site) because "drain,
    # but not forever" is what every caller (shutdown, tests) wants.
    async def flush(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until nothing is pending or in flight; False if `timeout` ran out first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Drain (up to `timeout`), then stop the workers; leftovers are logged and counted."""
        if self._tasks:
            await self.flush(timeout)
        self._closed = True
        # Taken before cancelling: a cancelled in-flight write has an unknown
        # outcome and must be reported, not forgotten by the worker's cleanup.
        left = list(self._pending) + [s for s in self._inflight if s not in self._pending]
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if left:
            self._counts["gave_up"] += len(left)
            log.error(
                "dynamodb write-behind closed with %d sessions unwritten: %s",
                len(left), ", ".join(left[:20]) + (" ..." if len(left) > 20 else ""),
            )
            self._pending.clear()
            self._inflight.clear()
            self._idle.set()
        if self._executor is not None:
            # Threads still blocked in boto3 finish on their own (bounded by
            # the client's timeouts); the loop need not wait for them.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- consumer side --------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            sid = await self._ready.get()
            write = self._pending.pop(sid)
            self._inflight[sid] = write
            answered = False
            try:
                answered = await self._write(write)
            finally:
                self._inflight.pop(sid, None)
                if sid in self._pending:
                    self._ready.put_nowait(sid)
                elif not self._pending and not self._inflight:
                    self._idle.set()
            if answered:
                self._succeeded()

    async def _write(self, write: _Write) -> bool:
        """Write until DynamoDB answers (True), or refuses the item for good (False)."""
        loop = asyncio.get_running_loop()
        sid = write.session_id
        attempt = 0
        while True:
            attempt += 1
            try:
                written = await loop.run_in_executor(
                    self._executor,
                    functools.partial(self.table.put, write.rec, ended_reason=write.ended_reason),
                )
            except Exception as exc:
                if is_permanent(exc):
                    self._counts["gave_up"] += 1
                    log.error(
                        "dynamodb refused session %s (version %s); giving this version up: %s",
                        sid, write.rec["v"], exc, exc_info=True,
                    )
                    return False
                self._failed(sid, exc)
                # Full jitter: spreads the retries of many writers hit by the
                # same trouble instead of bunching them up again.
                cap = min(self.max_delay, self.base_delay * (2 ** min(attempt - 1, 20)))
                if not is_retryable(exc):
                    # A missing table or refused credentials: an operator has to
                    # act, so probe at the slowest pace from the start.
                    cap = self.max_delay
                await asyncio.sleep(random.uniform(0, cap))
                # A newer submit of this session arrived while we waited: send
                # that instead, the old one would only lose the condition.
                newer = self._pending.get(sid)
                if newer is not None and newer.key() > write.key():
                    del self._pending[sid]
                    self._counts["coalesced"] += 1
                    newer.since = min(newer.since, write.since)
                    write = self._inflight[sid] = newer
                continue
            self._counts["written" if written else "stale"] += 1
            return True

    def _failed(self, sid: str, exc: BaseException) -> None:
        self._counts["retries"] += 1
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        # One line per few seconds of an outage, not one per attempt.
        if now - self._last_failure_log >= 5.0:
            self._last_failure_log = now
            log.warning(
                "dynamodb writes failing for %.1fs (%d sessions waiting, oldest change %.1fs"
                " old), retrying; last: session %s: %s",
                now - self._failing_since, self.pending, self.oldest_unwritten_age(), sid, exc,
            )

    def _succeeded(self) -> None:
        if self._failing_since is None:
            return
        failed_for = time.monotonic() - self._failing_since
        log.warning(
            "dynamodb writes recovered after %.1fs of failures (%d sessions still waiting)",
            failed_for, self.pending,
        )
        self._failing_since = None
        self._last_failure_log = 0.0
        self._counts["outages"] += 1
        if self.on_recovered is not None:
            self.on_recovered(failed_for)
