"""Smoke runs of every benchmark scenario: a few clients for a second or two.

These check that the load generator runs end to end (node and Redis
subprocesses, driver processes, results file) and produces numbers; they
assert nothing about the numbers' size, which depends on the machine.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import main
from bench.common import next_slot
from bench.profiling import summarize_collapsed

needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server is not installed")


def _run(tmp_path: Path, *argv: str) -> dict[str, Any]:
    code = main([*argv, "--results-dir", str(tmp_path), "--drivers", "2", "--deadline", "60"])
    files = sorted(tmp_path.glob(f"{argv[0]}-*.json"))
    assert len(files) == 1, list(tmp_path.iterdir())
    doc = json.loads(files[0].read_text())
    assert code == 0, doc["error"]
    assert doc["error"] is None
    assert doc["machine"]["nproc"] >= 1
    assert doc["steps"], doc
    return doc


def test_fill(tmp_path: Path) -> None:
    doc = _run(tmp_path, "fill", "--clients", "16,32", "--hold", "0.2")
    assert [s["clients"] for s in doc["steps"]] == [16, 32]
    for step in doc["steps"]:
        assert step["held"] is True
        assert step["answered_ping"] == step["clients"]
        assert step["rss_held_mib"] > 0
        assert step["fill_seconds"] > 0


def test_churn(tmp_path: Path) -> None:
    doc = _run(tmp_path, "churn", "--rooms", "4", "--rate", "20,40", "--duration", "1",
               "--warmup", "0.2")
    assert len(doc["steps"]) == 2
    for step in doc["steps"]:
        assert step["errors"] == {}
        assert step["joins"] > 0
        lat = step["join_latency_ms"]
        assert lat["n"] == step["joins"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
        assert step["usage"]["node1_cpu_pct"] is not None


def test_cold(tmp_path: Path) -> None:
    # 40 cycles: tens of ms of node CPU, several of /proc's 10 ms ticks.
    doc = _run(tmp_path, "cold", "--rooms", "4", "--rate", "40", "--duration", "1",
               "--warmup", "0.2")
    step = doc["steps"][0]
    assert step["errors"] == {}
    assert step["cycles"] > 0
    lat = step["cold_join_ms"]
    assert lat["n"] == step["cycles"] == step["close_ms"]["n"]
    # The whole cold join includes its connect + hello part.
    assert 0 < step["open_hello_ms"]["p50"] <= lat["max"]
    assert step["node_cpu_ms_per_cycle"] > 0


def test_list(tmp_path: Path) -> None:
    doc = _run(tmp_path, "list", "--rooms", "30,60", "--rate", "40", "--duration", "1",
               "--warmup", "0.2", "--listers", "2", "--page", "10")
    assert [s["rooms"] for s in doc["steps"]] == [30, 60]
    for step in doc["steps"]:
        assert step["errors"] == {}
        assert step["latency_ms"]["n"] > 0
        assert step["items_per_page"] > 0


def test_storm(tmp_path: Path) -> None:
    doc = _run(tmp_path, "storm", "--rooms", "6", "--spread", "0.2", "--wait", "10")
    step = doc["steps"][0]
    assert step["stuck_rooms"] == 0
    assert step["latency_ms"]["n"] == 6
    assert step["all_started_after_s"] is not None


@needs_redis
def test_cross_node_on_redis(tmp_path: Path) -> None:
    doc = _run(tmp_path, "cross-node", "--rooms", "4", "--rate", "20", "--duration", "1",
               "--warmup", "0.2")
    step = doc["steps"][0]
    assert doc["mode"] == "redis"
    assert step["errors"] == {}
    assert step["join_latency_ms"]["n"] > 0
    # Every join and leave is one script call: a round-trip count must be there.
    assert step["redis_per_join_leave"]["round_trips_per_op"] > 0
    assert "node2_cpu_pct" in step["usage"]
    # Redis' CPU is its own µs count: a second of light load is a few ms, which
    # /proc's 10 ms ticks can round to nothing. It is CPU time, not a command.
    assert step["redis_per_join_leave"]["cpu_usec_per_op"] > 0
    assert "cpu#usec" not in step["usage"]["redis_commands"]


@needs_redis
def test_chat_on_redis(tmp_path: Path) -> None:
    doc = _run(tmp_path, "chat", "--mode", "redis", "--rooms", "4", "--rate", "2",
               "--duration", "1", "--warmup", "0.2")
    step = doc["steps"][0]
    assert step["errors"] == {}
    assert step["fanout_latency_ms"]["n"] == step["messages"] > 0
    assert step["redis_per_message"]["round_trips_per_op"] > 0


def test_summarize_collapsed() -> None:
    text = ("process 1:main (a.py);f (a.py);g (b.py) 3\nprocess 1:main (a.py);f (a.py) 1\n"
            "main (a.py);EpollSelector.select (selectors.py) 5\n"
            "_bootstrap (threading.py);_worker (concurrent/futures/thread.py) 2\n")
    out = summarize_collapsed(text)
    assert out["busy_samples"] == 4
    assert out["idle_samples"] == 5
    assert out["pool_thread_samples"] == 2
    assert out["top_self"][0] == {"function": "g (b.py)", "samples": 3, "pct": 75.0}
    inclusive = {r["function"]: r["samples"] for r in out["top_inclusive"]}
    assert inclusive["f (a.py)"] == 4


def test_next_slot_skips_the_slots_a_slow_cycle_missed() -> None:
    period = 1_000_000_000
    now = time.monotonic_ns()
    # On time: the next slot, nothing late.
    assert next_slot(now + 10 * period, period, 0) == (now + 11 * period, 0)
    # A cycle that ran 5.5 periods over: the 5 slots that passed are skipped
    # (the schedule keeps its phase) and late, once past the warm-up only.
    late_slot, late = next_slot(now - 5 * period - period // 2, period, 0)
    assert (late_slot - now, late) == (period // 2, 5)
    assert next_slot(now - 5 * period - period // 2, period, now + period)[1] == 0


@needs_redis
def test_churn_on_a_cluster(tmp_path: Path) -> None:
    # --replies-only: the store's calls on 3 masters, whatever the bus delivers.
    doc = _run(tmp_path, "churn", "--mode", "cluster", "--replies-only", "--rooms", "4",
               "--rate", "20", "--duration", "1", "--warmup", "0.2")
    step = doc["steps"][0]
    assert doc["mode"] == "cluster"
    assert step["errors"] == {}
    per_op = step["redis_per_join_leave"]
    # A join and a leave are at least 2 script calls each on a cluster (player, session).
    assert per_op["commands_per_op"]["evalsha"] >= 4
    assert per_op["round_trips_per_op"] >= 4
    assert per_op["cpu_usec_per_op"] > 0
    assert len(step["usage"]["redis_cpu_pct_each"]) == 3


@needs_redis
def test_list_on_a_cluster(tmp_path: Path) -> None:
    doc = _run(tmp_path, "list", "--mode", "cluster", "--rooms", "30", "--rate", "20",
               "--duration", "1", "--warmup", "0.2", "--listers", "2", "--page", "10")
    step = doc["steps"][0]
    assert step["errors"] == {}
    assert step["items_per_page"] == 10
    # A list call per bucket with rooms left to page through (12 buckets on 3
    # masters), all counted: more than one per master.
    assert step["redis_per_list"]["commands_per_op"]["evalsha"] > 3
