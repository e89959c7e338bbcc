"""Issue 10, items 5 and 7: DynamoDB outages lose nothing; a Redis rebuild never
blocks Redis. Real processes: a private redis-server killed and restarted
empty, moto's DynamoDB server, lobby nodes with real WebSocket clients."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from boto3.dynamodb.types import TypeSerializer

from lobby.app import LobbyNode
from lobby.aws import make_client
from lobby.handlers import now_ms, token_hash
from lobby.persistence.dynamodb import SessionTable
from lobby.session import SessionRecord
from tests.aws_fixtures import dead_endpoint, moto_endpoint  # noqa: F401  (fixtures)
from tests.conftest import RedisServer, http_request
from tests.faults import private_redis, tcp_proxy  # noqa: F401  (fixtures)

_tables = itertools.count()

# How many sessions the rebuild test persists. moto's server is the bottleneck:
# on the 2-core test machine it stores ~1,250 items/s (batch_write_item from 4
# threads) and scans ~2,200 items/s, so 20,000 sessions cost ~25 s of setup
# alone; see docs/notes in the durability note for the measurement.
REBUILD_SESSIONS = int(os.environ.get("LOBBY_TEST_REBUILD_SESSIONS", "10000"))
REBUILD_BATCH = 200


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def table_name() -> str:
    return f"durability-{os.getpid()}-{next(_tables)}"


def persisted_record(i: int, now: int) -> SessionRecord:
    """A WAITING session with two members, as the lobby would have written it."""
    sid = f"bulk{i:06d}"
    return {  # type: ignore[typeddict-item]
        "id": sid, "name": f"room {i}", "host": f"h{i}", "state": "WAITING", "max": 4,
        "members": [
            {"id": f"h{i}", "name": f"host {i}", "joined": now, "tokh": token_hash(f"h{i}.t")},
            {"id": f"g{i}", "name": f"guest {i}", "joined": now + 1,
             "tokh": token_hash(f"g{i}.t")},
        ],
        "pw": None, "server_id": None, "endpoint": None, "seq": i + 1, "v": 2,
        "started": None, "created": now, "updated": now + 1, "active": now + 1,
    }


def bulk_put(table: SessionTable, records: list[SessionRecord], threads: int = 4) -> None:
    """Items as SessionTable.put writes them, 25 a call (DynamoDB's batch limit)."""
    ser = TypeSerializer()
    requests = [
        {"PutRequest": {"Item": {k: ser.serialize(v)
                                 for k, v in table.item_from_record(rec).items()}}}
        for rec in records
    ]

    def write(start: int) -> None:
        pending: dict[str, Any] = {table.table_name: requests[start:start + 25]}
        while pending:
            resp = table.client.batch_write_item(RequestItems=pending)
            pending = resp.get("UnprocessedItems") or {}

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(0, len(requests), 25)))


async def first_of(*aws: Any, timeout: float) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        assert done, "none of them happened in time"
    finally:
        for t in tasks:
            t.cancel()


async def test_rebuild_of_many_sessions_is_batched_and_nodes_serve_meanwhile(
    own_redis: RedisServer, moto_endpoint: str, make_node, table_name: str,  # noqa: F811
    connect_player,
) -> None:
    settings = {"redis_url": own_redis.url, "dynamodb": True, "dynamodb_table": table_name,
                "dynamodb_endpoint_url": moto_endpoint}
    n1: LobbyNode = await make_node(**settings)
    n2: LobbyNode = await make_node(**settings)
    for n in (n1, n2):
        n.rebuilder.batch_size = REBUILD_BATCH

    # One session made through the lobby; its host drops before Redis is lost.
    host = await connect_player(n1, "host")
    guest = await connect_player(n1, "guest")
    sid = (await host.ok("create_session", name="real"))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid)
    assert n1.persistence is not None
    assert await n1.persistence.flush(10)
    await host.close()
    await n1.check_store()

    table = SessionTable(table_name, endpoint_url=moto_endpoint)
    now = now_ms()
    records = [persisted_record(i, now) for i in range(REBUILD_SESSIONS)]
    t0 = time.perf_counter()
    await asyncio.to_thread(bulk_put, table, records)
    load_s = time.perf_counter() - t0

    for n in (n1, n2):  # forget the (empty) rebuild of the first start
        for event in n.rebuilder.reached.values():
            event.clear()
    # Blocks this loop (so no node runs) until Redis is back, empty; then every
    # Redis call over 10 ms is logged (the limit is 100 ms: the rest is to see
    # how close the batches come).
    own_redis.restart_empty()
    admin = redis.Redis(port=own_redis.port)
    admin.config_set("slowlog-log-slower-than", 10_000)
    admin.config_set("slowlog-max-len", 1024)
    admin.slowlog_reset()

    # A sweep finds the store empty; one node takes the lease and rebuilds.
    await first_of(n1.rebuilder.reached["restoring"].wait(),
                   n2.rebuilder.reached["restoring"].wait(), timeout=120)
    holder, other = (n1, n2) if n1.rebuilder.rebuilding else (n2, n1)
    assert not other.rebuilder.rebuilding
    # The dropped host resumes on the other node meanwhile: it waits for the
    # rebuild, then gets its session back.
    back = await connect_player(other, None)
    resume = asyncio.ensure_future(back.request("hello", resume_token=host.resume_token))

    # Both nodes answer while the batches run: new players on each list and
    # create rooms (new sessions on the half-rebuilt store).
    browser = await connect_player(other, "browser")
    on_holder = await connect_player(holder, "on-holder")
    answered = {holder.node_id: 0, other.node_id: 0}
    created: list[str] = []
    slowest = 0.0
    while holder.rebuilder.rebuilding:
        for player, node in ((browser, other), (on_holder, holder)):
            t = time.perf_counter()
            await player.ok("list_sessions", limit=5)
            slowest = max(slowest, time.perf_counter() - t)
            if holder.rebuilder.rebuilding:
                answered[node.node_id] += 1
        if not created:
            created.append((await browser.ok("create_session", name="during"))["session"][
                "session_id"])
    await asyncio.wait_for(holder.rebuilder.reached["done"].wait(), 60)
    assert min(answered.values()) >= 3, answered
    stats = holder.rebuilder.stats
    assert stats.restored == REBUILD_SESSIONS + 1  # every persisted session, the real one too
    assert stats.batches >= REBUILD_SESSIONS // REBUILD_BATCH

    logged = admin.slowlog_get(1024)
    slowest_call_ms = max((e["duration"] for e in logged), default=0) / 1000
    slow = [(e["duration"], e["command"][:80]) for e in logged if e["duration"] > 100_000]
    assert slow == []

    reply = await asyncio.wait_for(resume, 30)
    assert reply["ok"] is True and reply["resumed"] is True, reply
    assert reply["session"]["session_id"] == sid
    assert [p["player_id"] for p in reply["session"]["players"]] == [host.player_id,
                                                                    guest.player_id]
    # Both nodes are on the new generation; the room created meanwhile survived,
    # and every persisted session is back exactly as it was written.
    for n in (n1, n2):
        await n.check_store()
    assert n1._epoch == n2._epoch is not None
    assert await n2.store.get_session(created[0]) is not None
    for i in (0, REBUILD_SESSIONS // 2, REBUILD_SESSIONS - 1):
        assert await n1.store.get_session(records[i]["id"]) == records[i]
    # The guest (still connected to n1) was re-registered and can act.
    assert (await guest.request("leave_session"))["ok"] is True
    print(f"\nrebuild of {REBUILD_SESSIONS} sessions: moto load {load_s:.1f}s, "
          f"rebuild {stats.last_seconds:.2f}s in {stats.batches} batches, "
          f"slowest Redis call {slowest_call_ms:.0f} ms, "
          f"slowest list_sessions during it {slowest * 1000:.0f} ms")


async def item_of(table: SessionTable, sid: str) -> dict[str, Any] | None:
    return await asyncio.to_thread(table.get, sid)


async def assert_item_is_live(table: SessionTable, rec: SessionRecord | None) -> None:
    assert rec is not None
    item = await item_of(table, rec["id"])
    assert item is not None, rec["id"]
    assert item["session_state"] == rec["state"] and item["version"] == rec["v"], item
    assert json.loads(item["record"]) == rec


async def test_readyz_and_reconcile_after_a_dynamodb_outage(
    make_node, redis_url: str, moto_endpoint: str, table_name: str,  # noqa: F811
    dead_endpoint: str, connect_player,  # noqa: F811
) -> None:
    settings = {"redis_url": redis_url, "dynamodb": True, "dynamodb_table": table_name,
                "dynamodb_endpoint_url": moto_endpoint, "durability_max_lag_seconds": 0.3}
    n1: LobbyNode = await make_node(**settings)
    n2: LobbyNode = await make_node(**settings)
    table = SessionTable(table_name, endpoint_url=moto_endpoint)
    assert n1.table is not None and n2.table is not None
    assert n1.persistence is not None and n2.persistence is not None
    assert n1.reconciler is not None
    # DynamoDB goes away for both nodes (their endpoint now refuses connections).
    down = make_client("dynamodb", endpoint_url=dead_endpoint)
    n1.table.client = n2.table.client = down

    # Node 2 stops during the outage: its unwritten change (room B) is given up.
    other = await connect_player(n2, "other")
    bsid = (await other.ok("create_session", name="B"))["session"]["session_id"]
    await n2.persistence.close(timeout=0)
    assert n2.persistence.gave_up == 1
    # A session whose end no queue holds any more (a node crashed before writing it).
    ghost = persisted_record(1, now_ms())
    assert await asyncio.to_thread(table.put, ghost)

    host = await connect_player(n1, "host")
    guest = await connect_player(n1, "guest")
    asid = (await host.ok("create_session", name="A"))["session"]["session_id"]
    await guest.ok("join_session", session_id=asid)
    # Players never wait for DynamoDB; the node says it is behind once the
    # oldest unwritten change is older than the limit.
    await asyncio.sleep(0.4)  # the condition under test is the passing of time
    status, body = await http_request(n1.port, "GET", "/readyz")
    ready = json.loads(body)
    assert status == 503 and ready["ready"] is False, ready
    assert "durability behind" in ready["reason"]
    assert ready["durability"]["pending"] == 1 and ready["durability"]["gave_up"] == 0
    assert ready["durability"]["oldest_unwritten_age_s"] > 0.3
    status, body = await http_request(n1.port, "GET", "/metrics")
    prometheus = body.decode()
    assert "lobby_dynamodb_pending 1.0" in prometheus
    assert "lobby_dynamodb_oldest_unwritten_seconds " in prometheus
    assert "lobby_dynamodb_give_ups_total 0.0" in prometheus
    status, body = await http_request(n1.port, "GET", "/metrics.json")
    persistence = json.loads(body)["persistence"]
    assert persistence["pending"] == 1 and persistence["retries"] > 0
    assert persistence["failing_for_s"] > 0

    n1.table.client = table.client  # DynamoDB is back
    assert await n1.persistence.flush(15)
    await n1.reconciler.wait(1)
    assert n1.reconciler.stats.runs == 1
    # The table agrees with the store again: A as it is, B (whose write died
    # with node 2) rewritten from the store, the ghost ended.
    await assert_item_is_live(table, await n1.store.get_session(asid))
    await assert_item_is_live(table, await n1.store.get_session(bsid))
    gone = await item_of(table, ghost["id"])
    assert gone is not None and gone["session_state"] == "ENDED"
    assert gone["end_reason"] == "reconciled"
    assert n1.reconciler.stats.rewritten == 1 and n1.reconciler.stats.ended == 1
    status, body = await http_request(n1.port, "GET", "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True


OUTAGE_S = 3.5  # the report's 30 s, scaled down: the old queue gave up after ~1.5 s
KEY = "durability-key"


async def live_ids(node: LobbyNode) -> set[str]:
    ids: set[str] = set()
    cursor = None
    while True:
        page, cursor = await node.store.scan_sessions(cursor, 100)
        ids.update(r["id"] for r in page)
        if cursor is None:
            return ids


async def test_dynamodb_refused_for_seconds_loses_nothing_then_a_redis_loss_rebuilds_it(
    private_redis: RedisServer, tcp_proxy, moto_endpoint: str,  # noqa: F811
    make_node, table_name: str, connect_player,
) -> None:
    # (Redis and the proxy first: they outlive the nodes, which stop cleanly.)
    proxy = tcp_proxy(int(moto_endpoint.rsplit(":", 1)[1]))
    settings = {"redis_url": private_redis.url, "dynamodb": True, "dynamodb_table": table_name,
                "dynamodb_endpoint_url": proxy.url("http", ""), "server_key": KEY,
                "durability_max_lag_seconds": 1.0}
    n1: LobbyNode = await make_node(**settings)
    n2: LobbyNode = await make_node(**settings)
    nodes = (n1, n2)
    table = SessionTable(table_name, endpoint_url=moto_endpoint)  # past the proxy

    async def room(name: str, host_node: LobbyNode, guest_node: LobbyNode | None
                   ) -> tuple[str, Any, Any]:
        host = await connect_player(host_node, f"{name}-host")
        sid = (await host.ok("create_session", name=name))["session"]["session_id"]
        guest = None
        if guest_node is not None:
            guest = await connect_player(guest_node, f"{name}-guest")
            await guest.ok("join_session", session_id=sid)
        return sid, host, guest

    leave_sid, _, leaver = await room("leave", n1, n2)
    done_sid, done_host, _ = await room("complete", n2, n1)
    await done_host.ok("start_session")
    assert (await http_request(n2.port, "POST", f"/v1/sessions/{done_sid}/in-progress",
                               {"Authorization": f"Bearer {KEY}"}))[0] == 200
    start_sid, start_host, _ = await room("start", n1, n2)
    gone_sid, gone_host, _ = await room("abandon", n2, None)
    for n in nodes:
        assert n.persistence is not None
        assert await n.persistence.flush(10)

    proxy.down()  # DynamoDB refuses every connection, open ones are reset
    t_down = time.monotonic()
    await leaver.ok("leave_session")
    assert (await http_request(n2.port, "POST", f"/v1/sessions/{done_sid}/complete",
                               {"Authorization": f"Bearer {KEY}"}))[0] == 200
    await start_host.ok("start_session")
    await gone_host.ok("leave_session")
    creator = await connect_player(n2, "creator")
    new_sid = (await creator.ok("create_session", name="created"))["session"]["session_id"]
    # Players went on as if nothing had happened; DynamoDB stays away for a
    # while longer than the old queue's give-up point, twice over.
    await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_down)))
    for n in nodes:
        assert n.persistence is not None
        m = n.persistence.metrics
        assert m["pending"] >= 1 and m["gave_up"] == 0, m
        assert m["failing_for_s"] > 3.0, m
        status, body = await http_request(n.port, "GET", "/readyz")
        assert status == 503 and not json.loads(body)["ready"]

    proxy.restore()
    for n in nodes:
        assert n.persistence is not None and n.reconciler is not None
        assert await n.persistence.flush(15)
        await n.reconciler.wait(1)
        assert n.persistence.gave_up == 0
        assert n.persistence.metrics["outages"] == 1
        assert (await http_request(n.port, "GET", "/readyz"))[0] == 200

    # Every DynamoDB item is the live state: live sessions as the store holds
    # them, ended ones ENDED, and no other live item.
    live = await live_ids(n1)
    assert live == {leave_sid, start_sid, new_sid}
    before = {sid: await n1.store.get_session(sid) for sid in live}
    for rec in before.values():
        await assert_item_is_live(table, rec)
    for sid, reason in ((done_sid, "completed"), (gone_sid, "abandoned")):
        item = await item_of(table, sid)
        assert item is not None and item["session_state"] == "ENDED", item
        assert item["end_reason"] == reason
    persisted = await asyncio.to_thread(table.load_live_records)
    assert {r["id"] for r in persisted} == live

    # Redis is lost: the rebuild brings back exactly the live sessions.
    generations = [n.lobby.store_generation for n in nodes]
    private_redis.restart_empty()
    for n, generation in zip(nodes, generations, strict=True):
        assert await n.check_store(wait=20) > generation
    assert await live_ids(n2) == live
    for sid, rec in before.items():
        assert await n2.store.get_session(sid) == rec
    assert before[leave_sid] is not None and leaver.player_id not in [
        m["id"] for m in before[leave_sid]["members"]]
    assert before[start_sid] is not None and before[start_sid]["state"] == "CONNECTING"
    assert before[start_sid]["endpoint"] == "127.0.0.1:6060"
