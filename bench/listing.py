"""list: `list_sessions` pages at a fixed rate while N WAITING rooms exist.

Each room is one connected host in a session for 8, so every room is in the
open index. Rooms are grown in steps (1k, then 10k) on the same node. Listing
clients walk the cursor for --max-pages pages and start over, so deep pages
are measured as well as the first.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

from bench.client import BenchClient, RequestFailed
from bench.common import (
    MAX_CLIENTS,
    MODES,
    REGIONS,
    Opener,
    Run,
    error_name,
    next_slot,
    room_attributes,
    share,
    sleep_until,
)
from bench.driver import Channel, quiet_gc, serve_commands
from bench.procs import redis_per_op
from bench.report import latency_ms, merge_counts

REQUEST_TIMEOUT_S = 5.0


async def _lister(client: BenchClient, first_ns: int, period_ns: int, warm_ns: int,
                  end_ns: int, page: int, max_pages: int, out: dict[str, Any],
                  search: bool = False, rng: random.Random | None = None) -> None:
    slot = first_ns
    cursor: str | None = None
    depth = 0
    query: dict[str, Any] = {}
    while slot < end_ns:
        await sleep_until(slot)
        if search and depth == 0 and rng is not None:
            # A player browsing one mode in one region, fullest rooms first.
            query = {"filter": {"mode": rng.choice(MODES), "region": rng.choice(REGIONS)},
                     "sort": "most_players"}
        fields: dict[str, Any] = {"limit": page, **query}
        if cursor:
            fields["cursor"] = cursor
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                t_send, fut = client.send("list_sessions", **fields)
                t_reply, reply = await fut
            if not reply.get("ok"):
                raise RequestFailed(reply)
        except (TimeoutError, RequestFailed, ConnectionError) as exc:
            out["errors"][error_name(exc)] += 1
            return
        if slot >= warm_ns:
            out["lat"].append(t_reply - t_send)
            out["items"] += len(reply["sessions"])
        depth += 1
        cursor = reply.get("next_cursor")
        if not cursor or depth >= max_pages:
            cursor, depth = None, 0
        slot, late = next_slot(slot, period_ns, warm_ns)
        out["late"] += late


async def driver_main(ch: Channel, params: dict[str, Any], shard: int, shards: int) -> None:
    opener = Opener(params["url"], params["connect_concurrency"], f"l{shard}-")
    hosts: list[BenchClient] = []
    listers: list[BenchClient] = []
    rng = random.Random(shard)

    async def grow(data: dict[str, Any]) -> dict[str, Any]:
        if not listers:
            listers.extend(await asyncio.gather(
                *(opener.open() for _ in range(share(params["listers"], shard, shards)))))
        want = share(data["rooms"], shard, shards) - len(hosts)

        async def room() -> BenchClient:
            host = await opener.open()
            fields = {"attributes": room_attributes(rng)} if params.get("search") else {}
            await opener.request(host, "create_session", max_players=8, **fields)
            return host

        hosts.extend(await asyncio.gather(*(room() for _ in range(max(0, want)))))
        quiet_gc()
        return {"rooms": len(hosts)}

    async def measure(data: dict[str, Any]) -> dict[str, Any]:
        rate = data["rate"] / shards
        n = len(listers)
        period_ns = int(n / rate * 1e9)
        start_ns = data["start_ns"]
        warm_ns = start_ns + int(data["warmup_s"] * 1e9)
        end_ns = warm_ns + int(data["duration_s"] * 1e9)
        out: dict[str, Any] = {"lat": [], "items": 0, "late": 0, "errors": Counter()}
        await asyncio.gather(*(
            _lister(c, start_ns + int(period_ns * (i + shard / shards) / n), period_ns,
                    warm_ns, end_ns, data["page"], data["max_pages"], out,
                    params.get("search", False), random.Random(shard * 1000 + i))
            for i, c in enumerate(listers)
        ))
        out["errors"] = dict(out["errors"])
        return out

    try:
        await serve_commands(ch, {"grow": grow, "measure": measure})
    finally:
        opener.abort_all()


def run(run: Run) -> list[dict[str, Any]]:
    args = run.args
    if max(args.rooms) + args.listers > MAX_CLIENTS:
        raise SystemExit(f"list: at most {MAX_CLIENTS:,} sockets")
    if args.listers < args.drivers:
        raise SystemExit("list: --listers must be at least --drivers")
    if run.mode in ("redis", "cluster"):
        run.start_redis()
    node = run.start_node("node1", profiled=True)
    pool = run.start_drivers(driver_main, {
        "url": node.url, "listers": args.listers,
        "connect_concurrency": args.connect_concurrency,
        "search": args.search,
    })
    summary: list[dict[str, Any]] = []
    for i, rooms in enumerate(args.rooms):
        t0 = time.monotonic()
        grown = pool.command("grow", {"rooms": rooms}, wait_s=run.budget(120))
        have = sum(g["rooms"] for g in grown)
        run.notes.append(f"{have:,} rooms ready in {time.monotonic() - t0:.1f}s")
        if run.left() < args.warmup + args.duration + 5:
            run.notes.append(f"{rooms} rooms: not measured, --deadline is near")
            break
        label = f"rooms{rooms}"
        start_ns = time.monotonic_ns() + 200_000_000
        pool.broadcast("measure", {
            "rate": args.rate, "start_ns": start_ns, "warmup_s": args.warmup,
            "duration_s": args.duration, "page": args.page, "max_pages": args.max_pages,
        })
        time.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9 + args.warmup))
        profiled = i == len(args.rooms) - 1
        results, usage = run.gather_measured(
            pool, "measure", run.budget(args.duration + REQUEST_TIMEOUT_S + 15),
            profile=(node, label) if profiled else None)
        lat_ns = [x for r in results for x in r["lat"]]
        errors = merge_counts(r["errors"] for r in results)
        lat = latency_ms(lat_ns)
        step: dict[str, Any] = {
            "rooms": have,
            "target_rate": args.rate,
            "achieved_rate": round(len(lat_ns) / args.duration, 1),
            "late": sum(r["late"] for r in results),
            "errors": errors,
            "items_per_page": round(sum(r["items"] for r in results) / max(1, len(lat_ns)), 1),
            "latency_ms": lat,
            "usage": usage,
            "profiled": profiled and args.profile,
        }
        if run.redis is not None:
            step["redis_per_list"] = redis_per_op(
                usage["redis_commands"], len(lat_ns), run.redis_servers,
                usage.get("redis_cpu_seconds"))
        run.steps.append(step)
        row = {
            "rooms": have, "target/s": args.rate, "achieved/s": step["achieved_rate"],
            "items/page": step["items_per_page"], "errors": sum(errors.values()),
            "p50 ms": lat.get("p50"), "p95 ms": lat.get("p95"), "p99 ms": lat.get("p99"),
            "max ms": lat.get("max"), "node cpu%": usage.get("node1_cpu_pct"),
        }
        if run.redis is not None:
            row["redis cpu%"] = usage.get("redis_cpu_pct")
            row["script us"] = step["redis_per_list"].get("evalsha_usec_per_call")
            row["rt/list"] = step["redis_per_list"].get("round_trips_per_op")
        row["driver cpu%"] = usage.get("driver_cpu_pct_total")
        row["others cpu%"] = usage.get("other_processes_cpu_pct")
        summary.append(row)
    return summary
