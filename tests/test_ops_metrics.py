"""Prometheus /metrics with real traffic, and /readyz against a Redis that stops."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from lobby.app import LobbyNode
from lobby.bus import RedisBus
from tests.aws_fixtures import moto_endpoint  # noqa: F401  (fixture)
from tests.conftest import RedisServer, http_request

FAMILIES = {
    # gauges
    "lobby_sockets", "lobby_players", "lobby_sessions", "lobby_held_seats",
    "lobby_local_sessions", "lobby_open_sessions", "lobby_draining", "lobby_node_info",
    # counters
    "lobby_requests", "lobby_events", "lobby_frames_out", "lobby_slow_socket_drops",
    "lobby_claims", "lobby_connection_limits", "lobby_password_checks",
    "lobby_handshakes_in_flight", "lobby_listed_records",
    # histograms
    "lobby_request_duration_seconds", "lobby_fanout_latency_seconds",
    "lobby_claim_duration_seconds",
}
# A node on Redis only: the embedded store has no pub/sub bus.
BUS_FAMILIES = {"lobby_bus_messages", "lobby_bus_dropped_messages", "lobby_bus_losses",
                "lobby_bus_restores"}


async def scrape(node: LobbyNode, headers: dict[str, str] | None = None
                 ) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """{family: {(sample name, labels): value}} from a real GET /metrics."""
    status, body = await http_request(node.port, "GET", "/metrics", headers)
    assert status == 200, body
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        samples = out.setdefault(family.name, {})
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: dict[str, Any], family: str, sample: str | None = None, **labels: str
          ) -> float:
    key = (sample or family, tuple(sorted(labels.items())))
    return metrics[family].get(key, 0.0)


async def test_prometheus_families_and_counters_move(node: LobbyNode, connect_player) -> None:
    before = await scrape(node)
    assert FAMILIES <= before.keys(), FAMILIES - before.keys()
    on_redis = node.mode == "redis"
    assert (BUS_FAMILIES <= before.keys()) is on_redis
    assert value(before, "lobby_sockets") == 0

    host = await connect_player(node, "host")
    guest = await connect_player(node, "guest")
    sid = (await host.ok("create_session", max_players=4))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid)
    await host.event("player_joined")
    await guest.error("join_session", "ALREADY_IN_SESSION", session_id=sid)
    node.prometheus._store_stats_at = 0.0  # the store-wide gauges: no 5 s cache in a test
    during = await scrape(node)
    assert value(during, "lobby_sockets") == 2
    assert value(during, "lobby_players") == 2
    assert value(during, "lobby_sessions", state="WAITING") == 1
    assert value(during, "lobby_open_sessions") == 1
    assert value(during, "lobby_requests", "lobby_requests_total", type="hello", code="OK") == 2
    assert value(during, "lobby_requests", "lobby_requests_total", type="join_session",
                 code="ALREADY_IN_SESSION") == 1
    assert value(during, "lobby_request_duration_seconds",
                 "lobby_request_duration_seconds_count", type="create_session") == 1
    # Cumulative buckets (the node keeps them itself): non-decreasing up to +Inf,
    # which is the count; the two hellos took well under the top bucket's 5 s.
    hello = sorted(
        ((float(dict(labels)["le"]), v) for (name, labels), v
         in during["lobby_request_duration_seconds"].items()
         if name.endswith("_bucket") and dict(labels)["type"] == "hello"))
    assert [le for le, _ in hello][-1] == float("inf") and len(hello) == 14
    counts = [v for _, v in hello]
    assert counts == sorted(counts) and counts[-1] == 2 and hello[-2][1] == 2
    assert 0 < value(during, "lobby_request_duration_seconds",
                     "lobby_request_duration_seconds_sum", type="hello") < 5
    # The host's player_joined push: one fan-out observed, one frame out.
    assert value(during, "lobby_fanout_latency_seconds", "lobby_fanout_latency_seconds_count",
                 event="player_joined") == 1
    assert value(during, "lobby_frames_out", "lobby_frames_out_total") >= 1
    assert value(during, "lobby_events", "lobby_events_total") > value(
        before, "lobby_events", "lobby_events_total")
    if on_redis:  # the events came over pub/sub
        assert value(during, "lobby_bus_messages", "lobby_bus_messages_total") > value(
            before, "lobby_bus_messages", "lobby_bus_messages_total")

    await host.ok("start_session")
    await guest.event("session_started")
    after = await scrape(node)
    assert value(after, "lobby_claims", "lobby_claims_total", outcome="claimed") == 1
    assert value(after, "lobby_claim_duration_seconds", "lobby_claim_duration_seconds_count",
                 outcome="claimed") == 1
    assert value(after, "lobby_node_info", mode=node.mode, node=node.node_id) == 1

    status, body = await http_request(node.port, "GET", "/metrics.json")
    assert status == 200 and json.loads(body)["clients"] == 2


async def test_metrics_key(make_node) -> None:
    node = await make_node(metrics_key="scrape-secret")
    assert (await http_request(node.port, "GET", "/metrics"))[0] == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await http_request(node.port, "GET", "/metrics", wrong))[0] == 403
    assert (await http_request(node.port, "GET", "/metrics.json", wrong))[0] == 403
    ok = await scrape(node, {"Authorization": "Bearer scrape-secret"})
    assert "lobby_sockets" in ok


async def _readyz(node: LobbyNode) -> tuple[int, dict[str, Any]]:
    status, body = await http_request(node.port, "GET", "/readyz")
    return status, json.loads(body)


async def _until_status(node: LobbyNode, want: int, seconds: float) -> float:
    """Seconds until /readyz answers `want`, asked every 20 ms as a load balancer
    would (readiness is polled by design: there is no event to await)."""
    started = time.monotonic()
    async with asyncio.timeout(seconds):
        while True:
            if (await _readyz(node))[0] == want:
                return time.monotonic() - started
            await asyncio.sleep(0.02)


async def test_readyz_and_bus_metrics_follow_redis(make_node) -> None:
    redis = RedisServer()
    redis.start()
    try:
        node = await make_node(redis_url=redis.url)
        status, detail = await _readyz(node)
        assert status == 200 and detail["ready"] is True
        assert (await http_request(node.port, "GET", "/healthz"))[0] == 200
        before = await scrape(node)
        assert value(before, "lobby_bus_losses", "lobby_bus_losses_total") == 0
        assert value(before, "lobby_bus_restores", "lobby_bus_restores_total") == 0
        redis.stop()
        # "Within a second" of Redis stopping, measured from the process's exit.
        assert await _until_status(node, 503, 1.0) < 1.0
        status, detail = await _readyz(node)
        assert status == 503 and "redis" in detail["reason"]
        assert (await http_request(node.port, "GET", "/healthz"))[0] == 200  # still alive
        redis.start()
        await _until_status(node, 200, 5.0)
        # The bus lost its connection and subscribed its channels again.
        assert isinstance(node.bus, RedisBus)
        await asyncio.wait_for(node.bus.restored(0), 10)
        after = await scrape(node)
        assert value(after, "lobby_bus_losses", "lobby_bus_losses_total") >= 1
        assert value(after, "lobby_bus_restores", "lobby_bus_restores_total") == 1
    finally:
        redis.stop()


async def test_readyz_says_503_over_the_persistence_backlog(make_node) -> None:
    from lobby.persistence.dynamodb import PersistenceQueue, SessionTable

    node = await make_node(ready_max_backlog=1)
    # A queue whose workers never started: what it holds stays pending, as
    # when DynamoDB stops answering.
    node.persistence = PersistenceQueue(SessionTable("unused", endpoint_url="http://127.0.0.1:1"))
    record = {"id": "s1", "v": 1, "state": "WAITING", "members": [], "updated": 0}
    node.persistence.submit(record)
    assert (await _readyz(node))[0] == 200
    node.persistence.submit({**record, "id": "s2"})
    status, detail = await _readyz(node)
    assert status == 503 and detail["persistence_backlog"] == 2
    assert "dynamodb" in detail["reason"]
    node.persistence = None


async def test_dynamodb_write_metrics_move(make_node, redis_url, moto_endpoint: str,  # noqa: F811
                                           connect_player) -> None:
    node = await make_node(redis_url=redis_url, dynamodb=True,
                           dynamodb_table=f"ops-metrics-{uuid.uuid4().hex[:8]}",
                           dynamodb_endpoint_url=moto_endpoint)
    assert node.persistence is not None
    before = await scrape(node)
    assert value(before, "lobby_dynamodb_writes", "lobby_dynamodb_writes_total",
                 result="written") == 0
    host = await connect_player(node, "host")
    await host.ok("create_session")
    await host.ok("leave_session")
    assert await node.persistence.flush(10)
    after = await scrape(node)
    written = value(after, "lobby_dynamodb_writes", "lobby_dynamodb_writes_total",
                    result="written")
    assert written >= 1
    # Every successful write observed its lag (change -> in DynamoDB).
    assert value(after, "lobby_dynamodb_write_lag_seconds",
                 "lobby_dynamodb_write_lag_seconds_count") == written
    assert value(after, "lobby_dynamodb_give_ups", "lobby_dynamodb_give_ups_total") == 0
    assert value(after, "lobby_dynamodb_pending") == 0
