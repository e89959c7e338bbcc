"""SessionTable and PersistenceQueue against a real moto server (no DynamoDB mocks)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import threading
import time
from typing import Any

import pytest

from lobby.aws import make_client
from lobby.persistence.dynamodb import PersistenceQueue, SessionTable
from lobby.session import SessionRecord
from tests.aws_fixtures import dead_endpoint, moto_endpoint

__all__ = ["dead_endpoint", "moto_endpoint"]  # fixtures, used by name

_names = itertools.count()
T0 = 1_700_000_000_123  # ms


def make_record(
    sid: str = "s1",
    *,
    v: int = 1,
    state: str = "WAITING",
    members: int = 2,
    created: int = T0,
    updated: int | None = None,
    server: bool = False,
    pw: bool = True,
) -> SessionRecord:
    rec: dict[str, Any] = {
        "id": sid,
        "name": f"room {sid}",
        "host": "p0",
        "state": state,
        "max": 4,
        "members": [
            {"id": f"p{i}", "name": f"player {i}", "joined": created + i * 1000}
            for i in range(members)
        ],
        "pw": {"salt": "ab" * 16, "hash": "cd" * 32} if pw else None,
        "server_id": "gs-1" if server else None,
        "endpoint": "10.0.0.7:7777" if server else None,
        "seq": 42,
        "v": v,
        "created": created,
        "updated": created + v * 10 if updated is None else updated,
        "active": created + v * 10,
    }
    return rec  # type: ignore[return-value]


@pytest.fixture
def table(moto_endpoint: str) -> SessionTable:
    t = SessionTable(f"lobby_sessions_{next(_names)}", endpoint_url=moto_endpoint)
    t.init_table()
    return t


def test_init_table_creates_with_ttl_and_is_idempotent(moto_endpoint: str) -> None:
    name = f"lobby_sessions_{next(_names)}"
    t = SessionTable(name, endpoint_url=moto_endpoint)
    first = t.init_table()
    assert "created" in first and "enabled TTL" in first
    client = make_client("dynamodb", endpoint_url=moto_endpoint)
    desc = client.describe_table(TableName=name)["Table"]
    assert desc["TableStatus"] == "ACTIVE"
    assert desc["KeySchema"] == [{"AttributeName": "session_id", "KeyType": "HASH"}]
    assert desc["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "ENABLED"
    assert ttl["AttributeName"] == "expires_at"

    second = SessionTable(name, endpoint_url=moto_endpoint).init_table()
    assert "exists" in second and "TTL already" in second
    assert client.describe_time_to_live(TableName=name)["TimeToLiveDescription"] == ttl


def test_item_waiting(table: SessionTable) -> None:
    rec = make_record("w1", v=3, members=2)
    assert table.put(rec) is True
    item = table.get("w1")
    assert item is not None
    assert item["session_id"] == "w1"
    assert item["host_id"] == "p0"
    assert item["session_state"] == "WAITING"
    assert item["player_count"] == 2 and isinstance(item["player_count"], int)
    assert item["max_players"] == 4
    assert item["connected_players"] == ["p0", "p1"]
    assert item["server_id"] is None and item["server_endpoint"] is None
    assert item["name"] == "room w1"
    assert item["created_at"] == pytest.approx(T0 / 1000)
    assert isinstance(item["created_at"], float)
    assert item["updated_at"] == pytest.approx(rec["updated"] / 1000)
    assert item["version"] == 3
    assert item["expires_at"] == rec["updated"] // 1000 + 86_400
    assert "end_reason" not in item
    assert isinstance(item["record"], str)

    # The low-level types, as DynamoDB stores them.
    raw = table.client.get_item(TableName=table.table_name, Key={"session_id": {"S": "w1"}})
    raw = raw["Item"]
    for attr in ("player_count", "max_players", "created_at", "updated_at", "version",
                 "expires_at"):
        assert "N" in raw[attr], attr
    assert raw["connected_players"] == {"L": [{"S": "p0"}, {"S": "p1"}]}
    assert raw["server_id"] == {"NULL": True}
    assert raw["server_endpoint"] == {"NULL": True}


def test_item_connecting_with_server_fields(table: SessionTable) -> None:
    rec = make_record("c1", v=7, state="CONNECTING", server=True)
    assert table.put(rec)
    item = table.get("c1")
    assert item is not None
    assert item["session_state"] == "CONNECTING"
    assert item["server_id"] == "gs-1"
    assert item["server_endpoint"] == "10.0.0.7:7777"
    assert item["expires_at"] == rec["updated"] // 1000 + 86_400

    rec2 = make_record("c1", v=8, state="IN_PROGRESS", server=True)
    assert table.put(rec2)
    item = table.get("c1")
    assert item is not None
    assert item["session_state"] == "IN_PROGRESS"
    assert item["expires_at"] == rec2["updated"] // 1000 + 2 * 86_400


def test_item_ended_and_empty_members(table: SessionTable) -> None:
    rec = make_record("e1", v=4, members=0)
    now_ms = T0 + 3_600_000
    item_shape = table.item_from_record(rec, ended_reason="HOST_LEFT", now_ms=now_ms)
    assert item_shape["session_state"] == "ENDED"
    assert table.put(rec, ended_reason="HOST_LEFT", now_ms=now_ms)
    item = table.get("e1")
    assert item is not None
    assert item["session_state"] == "ENDED"
    assert item["end_reason"] == "HOST_LEFT"
    assert item["connected_players"] == []
    assert item["player_count"] == 0
    assert item["version"] == 4
    assert item["updated_at"] == pytest.approx(now_ms / 1000)
    assert item["expires_at"] == now_ms // 1000 + 7 * 86_400
    raw = table.client.get_item(TableName=table.table_name, Key={"session_id": {"S": "e1"}})
    assert raw["Item"]["connected_players"] == {"L": []}


def test_ttls_are_configurable(moto_endpoint: str) -> None:
    t = SessionTable("unused", endpoint_url=moto_endpoint, waiting_ttl_s=10,
                     in_progress_ttl_s=20, ended_ttl_s=30)
    rec = make_record("x", updated=T0)
    base = T0 // 1000
    assert t.item_from_record(rec)["expires_at"] == base + 10
    assert t.item_from_record(make_record("x", state="IN_PROGRESS", updated=T0))[
        "expires_at"] == base + 20
    assert t.item_from_record(rec, ended_reason="r", now_ms=T0)["expires_at"] == base + 30


def test_stale_write_loses(table: SessionTable) -> None:
    assert table.put(make_record("st", v=5)) is True
    assert table.put(make_record("st", v=3)) is False
    assert table.put(make_record("st", v=5)) is False  # equal version: not newer
    item = table.get("st")
    assert item is not None and item["version"] == 5
    assert table.put(make_record("st", v=6)) is True
    assert table.get("st")["version"] == 6  # type: ignore[index]


def test_ended_beats_live_and_is_terminal(table: SessionTable) -> None:
    assert table.put(make_record("end", v=5))
    # Same version: the end-write wins.
    assert table.put(make_record("end", v=5), ended_reason="IDLE") is True
    # A late live write, even of a higher version, does not resurrect it.
    assert table.put(make_record("end", v=9)) is False
    assert table.get("end")["session_state"] == "ENDED"  # type: ignore[index]
    # A later end-write of a higher version replaces an earlier one; lower does not.
    assert table.put(make_record("end", v=6), ended_reason="EMPTY") is True
    assert table.put(make_record("end", v=2), ended_reason="OLD") is False
    item = table.get("end")
    assert item is not None and item["end_reason"] == "EMPTY" and item["version"] == 6
    # A reused id (a newer incarnation, later `created`) starts afresh.
    assert table.put(make_record("end", v=1, created=T0 + 60_000)) is True
    item = table.get("end")
    assert item is not None and item["session_state"] == "WAITING" and item["version"] == 1


def test_load_live_records_round_trip(table: SessionTable) -> None:
    now_ms = int(time.time() * 1000)
    live = [
        make_record("l1", v=2, created=now_ms, pw=True),
        make_record("l2", v=5, state="CONNECTING", server=True, created=now_ms, pw=False),
        make_record("l3", v=9, state="IN_PROGRESS", server=True, created=now_ms),
    ]
    for rec in live:
        assert table.put(rec)
    ended = make_record("gone", v=3, created=now_ms)
    assert table.put(ended, ended_reason="EMPTY")
    # Expired by TTL but not yet swept (DynamoDB deletes lazily): not live.
    assert table.put(make_record("old", v=1, created=now_ms - 3 * 86_400_000))
    got = sorted(table.load_live_records(), key=lambda r: r["id"])
    assert got == live


async def test_queue_coalesces_and_keeps_newest(table: SessionTable) -> None:
    rng = random.Random(1234)
    sessions = [f"q{i}" for i in range(20)]
    submits = [(sid, v) for sid in sessions for v in range(1, 11)]
    rng.shuffle(submits)  # versions of a session arrive out of order, interleaved
    q = PersistenceQueue(table, workers=4)
    q.start()
    try:
        for n, (sid, v) in enumerate(submits):
            q.submit(make_record(sid, v=v))
            if n % 7 == 0:
                await asyncio.sleep(0.002)  # let some writes go out mid-stream
        assert await q.flush(10)
        m = q.metrics
        assert m["pending"] == 0
        assert m["gave_up"] == 0 and m["overflow"] == 0
        assert m["written"] + m["stale"] + m["coalesced"] == 200
        assert m["written"] >= 20
        for sid in sessions:
            item = table.get(sid)
            assert item is not None and item["version"] == 10, sid
    finally:
        await q.close()


async def test_queue_ended_not_replaced_by_live(table: SessionTable) -> None:
    q = PersistenceQueue(table)  # not started: submits stay pending
    q.submit(make_record("qe", v=4), ended_reason="HOST_LEFT")
    q.submit(make_record("qe", v=4))
    q.submit(make_record("qe", v=6))
    assert q.pending == 1 and q.metrics["coalesced"] == 2
    q.start()
    try:
        assert await q.flush(5)
        item = table.get("qe")
        assert item is not None and item["session_state"] == "ENDED" and item["version"] == 4
        assert q.metrics["written"] == 1
    finally:
        await q.close()


async def test_queue_copies_record_on_submit(table: SessionTable) -> None:
    q = PersistenceQueue(table)
    rec = make_record("cp", v=1)
    q.submit(rec)
    rec["name"] = "changed after submit"
    q.start()
    try:
        assert await q.flush(5)
        assert table.get("cp")["name"] == "room cp"  # type: ignore[index]
    finally:
        await q.close()


class _CountingTable(SessionTable):
    """The real table, plus a count of failed put() calls the test can wait for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = 0
        self._changed = threading.Condition()

    def put(self, rec: Any, *, ended_reason: str | None = None, now_ms: int | None = None) -> bool:
        try:
            return super().put(rec, ended_reason=ended_reason, now_ms=now_ms)
        except Exception:
            with self._changed:
                self.failures += 1
                self._changed.notify_all()
            raise

    def wait_failures(self, n: int, timeout: float = 10.0) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.failures >= n, timeout), self.failures


async def test_queue_keeps_the_newest_write_until_dynamodb_answers(
    table: SessionTable, dead_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The same table, first reached through an endpoint that refuses every
    # connection (DynamoDB down), then through the working one.
    down = _CountingTable(table.table_name, endpoint_url=dead_endpoint)
    recovered: list[float] = []
    q = PersistenceQueue(down, base_delay=0.01, max_delay=0.05,
                         on_recovered=recovered.append)
    q.start()
    try:
        with caplog.at_level(logging.WARNING, logger="lobby.persistence.dynamodb"):
            t0 = time.perf_counter()
            q.submit(make_record("dead", v=1))
            assert time.perf_counter() - t0 < 0.05  # no I/O on the caller's path
            # Far past the old give-up point (6 attempts, ~1.5 s of backoff).
            await asyncio.to_thread(down.wait_failures, 12)
            q.submit(make_record("dead", v=2))
            q.submit(make_record("dead", v=3), ended_reason="abandoned")
            await asyncio.to_thread(down.wait_failures, down.failures + 3)
            m = q.metrics
            assert m["pending"] == 1 and m["gave_up"] == 0 and m["written"] == 0
            assert m["retries"] >= 15 and m["outages"] == 0
            # The age is the first unwritten change's, not the newest one's.
            assert m["oldest_unwritten_age_s"] >= time.perf_counter() - t0 - 0.2 > 0
            assert m["failing_for_s"] > 0
            assert not recovered
            outage = time.perf_counter() - t0
            down.client = table.client  # DynamoDB answers again
            assert await q.flush(10)
        item = table.get("dead")
        # The last write of the session (its end) is the one that landed.
        assert item is not None and item["session_state"] == "ENDED" and item["version"] == 3
        m = q.metrics
        assert m["written"] == 1 and m["gave_up"] == 0 and m["coalesced"] == 2
        assert m["outages"] == 1 and m["failing_for_s"] == 0
        assert m["oldest_unwritten_age_s"] == 0 and m["pending"] == 0
        # Told once, with how long writes had been failing.
        assert len(recovered) == 1 and recovered[0] >= outage - 0.2
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        # One line per few seconds of failures, and one for the recovery.
        assert any("failing" in w for w in warnings) and len(warnings) <= 4, warnings
        assert "recovered" in warnings[-1]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        await q.close()


async def test_queue_gives_up_only_what_dynamodb_refuses_to_store(
    table: SessionTable, caplog: pytest.LogCaptureFixture
) -> None:
    q = PersistenceQueue(table)
    q.start()
    try:
        with caplog.at_level(logging.ERROR, logger="lobby.persistence.dynamodb"):
            q.submit(make_record("", v=1))  # an empty key: ValidationException, every time
            q.submit(make_record("fine", v=1))
            assert await q.flush(10)
        m = q.metrics
        assert m["gave_up"] == 1 and m["written"] == 1 and m["retries"] == 0
        assert table.get("fine") is not None
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "giving this version up" in errors[0]
    finally:
        await q.close()


async def test_queue_overflow_accepts_and_counts(
    table: SessionTable, caplog: pytest.LogCaptureFixture
) -> None:
    q = PersistenceQueue(table, max_pending=3)
    with caplog.at_level(logging.WARNING, logger="lobby.persistence.dynamodb"):
        for i in range(5):
            q.submit(make_record(f"of{i}", v=1))
        q.submit(make_record("of0", v=2))  # coalesces: no new session, no overflow
    assert q.metrics["overflow"] == 2
    assert q.pending == 5
    assert any("over 3 pending" in r.getMessage() for r in caplog.records)
    q.start()
    try:
        assert await q.flush(5)
        assert q.metrics["written"] == 5
        assert table.get("of0")["version"] == 2  # type: ignore[index]
    finally:
        await q.close()


async def test_close_reports_unwritten(
    table: SessionTable, caplog: pytest.LogCaptureFixture
) -> None:
    q = PersistenceQueue(table)  # never started: nothing can drain
    q.submit(make_record("never", v=1))
    with caplog.at_level(logging.ERROR, logger="lobby.persistence.dynamodb"):
        await q.close(timeout=0.1)
        q.submit(make_record("late", v=1))
    assert q.metrics["gave_up"] == 2
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert "never" in msgs and "late" in msgs


class _WatchedTable(SessionTable):
    """The real table, plus a record of which sessions are in put() at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self.active: dict[str, int] = {}
        self.max_active_per_session = 0
        self.max_active_total = 0
        self.sent: list[tuple[str, int]] = []

    def put(self, rec: Any, *, ended_reason: str | None = None, now_ms: int | None = None) -> bool:
        sid = rec["id"]
        with self._lock:
            self.active[sid] = self.active.get(sid, 0) + 1
            self.max_active_per_session = max(self.max_active_per_session, self.active[sid])
            self.max_active_total = max(self.max_active_total, sum(self.active.values()))
            self.sent.append((sid, rec["v"]))
        try:
            time.sleep(0.01)  # a slow DynamoDB: submits pile up while writes are in flight
            return super().put(rec, ended_reason=ended_reason, now_ms=now_ms)
        finally:
            with self._lock:
                self.active[sid] -= 1


async def test_queue_never_has_a_session_in_flight_twice(moto_endpoint: str) -> None:
    table = _WatchedTable(f"lobby_sessions_{next(_names)}", endpoint_url=moto_endpoint)
    table.init_table()
    q = PersistenceQueue(table, workers=4)
    q.start()
    try:
        for v in range(1, 31):
            for sid in ("hot", "warm"):
                q.submit(make_record(sid, v=v))
            await asyncio.sleep(0.003)
        assert await q.flush(10)
    finally:
        await q.close()
    assert table.max_active_per_session == 1
    assert table.max_active_total == 2  # the two sessions did go out in parallel
    for sid in ("hot", "warm"):
        versions = [v for s, v in table.sent if s == sid]
        assert versions == sorted(versions) and versions[-1] == 30
        assert len(versions) < 30  # coalescing saved calls
        assert table.get(sid)["version"] == 30  # type: ignore[index]
    assert q.metrics["stale"] == 0
