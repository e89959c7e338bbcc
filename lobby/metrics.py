"""A node's Prometheus metrics (text exposition format, `prometheus_client`).

Each node has its own registry (tests run several nodes in one process). What
the node already counts as plain integers (hub, sockets, pub/sub bus, DynamoDB
queue, allocator) is read at scrape time by a collector, so the hot paths pay nothing
for it; so are the request counts and the request and fan-out latency histograms,
kept as plain numbers by the loop (LoopHistogram); the rarer distributions (claims,
DynamoDB lag) are prometheus_client's own.
Store-wide numbers (sessions by state, held seats) come from the store and
are refreshed at most every STORE_STATS_SECONDS, so scrapes of many nodes do
not each scan every session.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from lobby.bus import RedisBus
from lobby.session import LIVE_STATES
from lobby.store.search import LISTED

if TYPE_CHECKING:
    from lobby.app import LobbyNode

CONTENT_TYPE = CONTENT_TYPE_LATEST
STORE_STATS_SECONDS = 5.0
# Lobby requests take well under a millisecond to tens of ms; claims and
# DynamoDB writes up to seconds.
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SLOW_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class NodeMetrics:
    def __init__(self, node: LobbyNode) -> None:
        self.node = node
        self.registry = CollectorRegistry()
        r = self.registry
        # Observed on every request and fan-out: kept as plain numbers and read at
        # scrape time (prometheus_client's Histogram takes a lock twice an
        # observation, ~2-3% of a change's CPU); all of it happens on the loop.
        self.requests: dict[tuple[str, str], int] = {}
        self.request_seconds = LoopHistogram(
            "lobby_request_duration_seconds", "time from a parsed request to its reply",
            "type", FAST_BUCKETS)
        self.fanout_seconds = LoopHistogram(
            "lobby_fanout_latency_seconds", "time from a session change in the store (the "
            "writer's clock, ms resolution) to its broadcast to this node's sockets",
            "event", FAST_BUCKETS)
        self.claims = Counter(
            "lobby_claims", "game-server claims by outcome (claimed, no_server, error)",
            ["outcome"], registry=r)
        self.claim_seconds = Histogram(
            "lobby_claim_duration_seconds", "time of a game-server claim (the allocator call)",
            ["outcome"], buckets=SLOW_BUCKETS, registry=r)
        self.dynamodb_lag = Histogram(
            "lobby_dynamodb_write_lag_seconds", "time from a session change to its DynamoDB "
            "write succeeding", buckets=SLOW_BUCKETS, registry=r)
        r.register(_NodeCollector(self))
        self.store_stats: dict[str, Any] = {}
        self.state_counts: dict[str, int] = {}
        self._store_stats_at = 0.0

    def observe_request(self, rtype: str, code: str, seconds: float) -> None:
        key = (rtype, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.request_seconds.observe(rtype, seconds)

    def observe_claim(self, outcome: str, seconds: float) -> None:
        self.claims.labels(outcome).inc()
        self.claim_seconds.labels(outcome).observe(seconds)

    def observe_fanout(self, event: str, changed_ms: int | float) -> None:
        self.fanout_seconds.observe(event, max(0.0, time.time() - changed_ms / 1000))

    def observe_written(self, changed_ms: int | float) -> None:
        self.dynamodb_lag.observe(max(0.0, time.time() - changed_ms / 1000))

    async def refresh(self) -> None:
        """Store-wide gauges, at most every STORE_STATS_SECONDS."""
        now = time.monotonic()
        if now - self._store_stats_at < STORE_STATS_SECONDS and self._store_stats_at:
            return
        self._store_stats_at = now
        self.store_stats = await self.node.store.stats()
        self.state_counts = await self.node.admin_state_counts()

    async def render(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)


class LoopHistogram:
    """A labelled histogram observed from the event loop only (no lock), exposed
    like prometheus_client's (cumulative `_bucket`s with `le`, `_count`, `_sum`)."""

    def __init__(self, name: str, doc: str, label: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.doc = doc
        self.label = label
        self.bounds = list(buckets)
        self._les = [floatToGoString(b) for b in (*buckets, math.inf)]
        # label value -> [count per bucket (the last one +Inf)..., sum]
        self.series: dict[str, list[float]] = {}

    def observe(self, value_of: str, seconds: float) -> None:
        series = self.series.get(value_of)
        if series is None:
            series = self.series[value_of] = [0] * (len(self.bounds) + 1) + [0.0]
        series[bisect_left(self.bounds, seconds)] += 1  # le: a bound is in its bucket
        series[-1] += seconds

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc, labels=[self.label])
        for value_of, series in self.series.items():
            total = 0.0
            buckets = []
            for le, count in zip(self._les, series, strict=False):
                total += count
                buckets.append((le, total))
            family.add_metric([value_of], buckets, series[-1])
        return family


class _NodeCollector:
    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        node = m.node
        hub = node.hub
        yield _gauge("lobby_node_info", "this node (value 1)", 1,
                     {"node": node.node_id, "mode": node.mode})
        requests = CounterMetricFamily(
            "lobby_requests", "WebSocket requests handled, by type and result code (OK or "
            "the error code)", labels=["type", "code"])
        for (rtype, code), count in m.requests.items():
            requests.add_metric([rtype, code], count)
        yield requests
        yield m.request_seconds.family()
        yield m.fanout_seconds.family()
        yield _gauge("lobby_sockets", "open WebSocket connections on this node",
                     hub.client_count)
        yield _gauge("lobby_players", "sockets on this node that said hello",
                     hub.player_count)
        yield _gauge("lobby_local_sessions", "sessions with a member on this node",
                     hub.session_count)
        yield _gauge("lobby_draining", "1 while this node drains (SIGTERM)",
                     1 if node.draining else 0)
        sessions = GaugeMetricFamily("lobby_sessions", "live sessions in the store by state",
                                     labels=["state"])
        for state in LIVE_STATES:
            sessions.add_metric([state], m.state_counts.get(state, 0))
        yield sessions
        stats = m.store_stats
        yield _gauge("lobby_held_seats", "seats held for dropped players (store-wide)",
                     stats.get("held_seats", 0))
        yield _gauge("lobby_open_sessions", "WAITING sessions with a free seat (store-wide)",
                     stats.get("open_sessions", 0))
        yield _counter("lobby_events", "store events received by this node", hub.events_in)
        yield _counter("lobby_frames_out", "event frames pushed to this node's sockets",
                       hub.frames_out)
        yield _counter("lobby_slow_socket_drops", "sockets dropped for not reading",
                       node.sockets.stats.get("slow_drops", 0))
        bus = node.bus
        if isinstance(bus, RedisBus):  # the embedded store delivers in-process: no bus
            yield _counter("lobby_bus_messages", "pub/sub messages read off the wire "
                           "(session events and messages to this node's sockets)",
                           bus.received)
            yield _counter("lobby_bus_dropped_messages", "of those, messages of channels "
                           "this node no longer subscribes to", bus.dropped)
            yield _counter("lobby_bus_losses", "pub/sub connections found broken or silent, "
                           "and channels whose slot moved to another master", bus.losses)
            yield _counter("lobby_bus_restores", "times every lost channel was subscribed "
                           "again (events of the gap are gone: the node reconciles its "
                           "sockets with the store)", bus.restores)
        gate = getattr(node, "gate", None)  # per-address limits (lobby/addresses.py)
        if gate is not None:
            yield _gauge("lobby_handshakes_in_flight", "WebSocket handshakes not yet done",
                         gate.handshakes)
            limits = CounterMetricFamily(
                "lobby_connection_limits", "connections refused, evicted or dropped by the "
                "per-address and handshake limits, by event", labels=["event"])
            for key, value in sorted(gate.stats.items()):
                if type(value) is int:
                    limits.add_metric([key], value)
            yield limits
        cached = CounterMetricFamily(
            "lobby_listed_records", "list_sessions records from the store, by whether this "
            "process had them decoded and rendered already (hit) or not (miss)",
            labels=["cache"])
        cached.add_metric(["hit"], LISTED.hits)
        cached.add_metric(["miss"], LISTED.misses)
        yield cached
        checks = getattr(node.lobby, "password_checks", None)
        if type(checks) is int:
            yield _counter("lobby_password_checks", "scrypt password verifications run", checks)
        allocator = node.allocator
        for attr in ("retries", "failures", "throttled"):
            if hasattr(allocator, attr):
                yield _counter(f"lobby_allocator_{attr}", f"allocator {attr}",
                               getattr(allocator, attr))
        persistence = node.persistence
        if persistence is not None:
            counts = dict(persistence.metrics)
            yield _gauge("lobby_dynamodb_pending", "sessions waiting for their DynamoDB write",
                         counts.pop("pending", persistence.pending))
            yield _gauge("lobby_dynamodb_failing_seconds",
                         "how long DynamoDB writes have been failing (0: they succeed)",
                         counts.pop("failing_for_s", 0.0))
            writes = CounterMetricFamily(
                "lobby_dynamodb_writes", "DynamoDB write-behind outcomes (written, stale: a "
                "newer version was there, gave_up, retries, coalesced, overflow)",
                labels=["result"])
            for key, value in sorted(counts.items()):
                # Whole numbers are counts; ages and other readings are not counters.
                if type(value) is int:
                    writes.add_metric([key], value)
            yield writes
            age = getattr(persistence, "oldest_unwritten_age", None)
            if callable(age):
                yield _gauge("lobby_dynamodb_oldest_unwritten_seconds",
                             "age of the oldest change not yet in DynamoDB", age())
            yield _counter("lobby_dynamodb_give_ups", "session writes given up",
                           counts.get("gave_up", 0))


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None
           ) -> GaugeMetricFamily:
    if labels:
        family = GaugeMetricFamily(name, doc, labels=list(labels))
        family.add_metric(list(labels.values()), value)
        return family
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
