"""storm: full rooms whose hosts all send start_session within --spread seconds.

A room's latency runs from its host's send to the moment the last of its 8
members (the host included) has `session_started`. A room whose members do
not all have it within --wait of the storm's start is stuck. With FleetIQ (when
`lobby serve` has --fleetiq-group), every start is a ClaimGameServer call to a
local fleetiq-local holding one registered game server per room.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from bench.client import BenchClient
from bench.common import MAX_CLIENTS, Opener, Run, error_name, make_room, share, sleep_until
from bench.driver import Channel, quiet_gc, serve_commands
from bench.procs import FleetIQProc, redis_per_op, serve_help
from bench.report import latency_ms, merge_counts

ROOM_SIZE = 8
GROUP = "bench-group"
RETRY_WAIT_S = 5.0


class StormRoom:
    __slots__ = ("_got", "_last", "done", "failed", "members", "sid")

    def __init__(self, sid: str, members: list[BenchClient]) -> None:
        self.sid = sid
        self.members = members
        self._got = 0
        self._last = 0
        self.failed = 0
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        for m in members:
            m.on_event = self._on_event

    def _on_event(self, client: BenchClient, ev: dict[str, Any], t_ns: int) -> None:
        kind = ev.get("type")
        if kind == "session_started":
            self._got += 1
            self._last = max(self._last, t_ns)
            if self._got == len(self.members) and not self.done.done():
                self.done.set_result(self._last)
        elif kind == "session_start_failed":
            self.failed += 1


async def driver_main(ch: Channel, params: dict[str, Any], shard: int, shards: int) -> None:
    opener = Opener(params["url"], params["connect_concurrency"], f"s{shard}-")
    rooms: list[StormRoom] = []

    async def setup(_: Any) -> dict[str, Any]:
        n = share(params["rooms"], shard, shards)

        async def build() -> StormRoom:
            sid, members = await make_room(opener, ROOM_SIZE)
            return StormRoom(sid, members)

        rooms.extend(await asyncio.gather(*(build() for _ in range(n))))
        quiet_gc()
        return {"rooms": len(rooms)}

    async def storm(data: dict[str, Any]) -> dict[str, Any]:
        t0 = data["t0_ns"]
        spread_ns = int(data["spread_s"] * 1e9)
        total = data["rooms_total"]
        deadline_ns = t0 + int(data["wait_s"] * 1e9)
        out: dict[str, Any] = {"latency_ns": [], "reply_ns": [], "last_rel_ns": [],
                               "stuck": 0, "reply_errors": Counter(), "start_failed_events": 0}

        async def one(j: int, room: StormRoom) -> None:
            # Rooms of all shards interleave, so sends are even over the spread.
            gidx = j * shards + shard
            await sleep_until(t0 + spread_ns * gidx // max(1, total))
            try:
                t_send, fut = room.members[0].send("start_session")
                async with asyncio.timeout(max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9)):
                    t_reply, reply = await fut
                    out["reply_ns"].append(t_reply - t_send)
                    if not reply.get("ok"):
                        out["reply_errors"][reply.get("error", {}).get("code", "?")] += 1
                        out["stuck"] += 1
                        return
                    last = await room.done
            except (TimeoutError, ConnectionError) as exc:
                out["stuck"] += 1
                if not isinstance(exc, TimeoutError):
                    out["reply_errors"][error_name(exc)] += 1
                return
            out["latency_ns"].append(last - t_send)
            out["last_rel_ns"].append(last - t0)

        await asyncio.gather(*(one(j, r) for j, r in enumerate(rooms)))
        out["start_failed_events"] = sum(r.failed for r in rooms)
        out["reply_errors"] = dict(out["reply_errors"])
        out["retry"] = await retry([r for r in rooms if not r.done.done()])
        return out

    async def retry(failed: list[StormRoom]) -> dict[str, int]:
        """Start each failed room once more, calmly: can it still start, or is it wedged?"""
        outcomes: Counter[str] = Counter()
        sem = asyncio.Semaphore(8)
        deadline = time.monotonic() + RETRY_WAIT_S * 2

        async def again(room: StormRoom) -> None:
            async with sem:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        _, fut = room.members[0].send("start_session")
                        _, reply = await fut
                        if not reply.get("ok"):
                            outcomes[reply.get("error", {}).get("code", "?")] += 1
                            return
                        await room.done
                        outcomes["started"] += 1
                except (TimeoutError, ConnectionError) as exc:
                    outcomes[error_name(exc)] += 1

        await asyncio.gather(*(again(r) for r in failed))
        return dict(outcomes)

    try:
        await serve_commands(ch, {"setup": setup, "storm": storm})
    finally:
        opener.abort_all()


def run(run: Run) -> list[dict[str, Any]]:
    args = run.args
    if args.rooms * ROOM_SIZE > MAX_CLIENTS:
        raise SystemExit(f"storm: at most {MAX_CLIENTS // ROOM_SIZE:,} rooms")
    has_fleetiq = "--fleetiq-group" in serve_help()
    use_fleetiq = args.allocator == "fleetiq" or (args.allocator == "auto" and has_fleetiq)
    extra: list[str] = []
    if use_fleetiq:
        if not has_fleetiq:
            raise SystemExit("storm: `lobby serve` has no --fleetiq-group option yet")
        limit = None
        if args.claim_limit:
            rate, _, burst = args.claim_limit.partition(",")
            limit = (float(rate), int(burst or 40))
        fleet = FleetIQProc(run.log_dir, GROUP, servers=args.rooms + 16, claim_limit=limit)
        run.others.append(fleet)
        extra = ["--fleetiq-group", GROUP, "--aws-endpoint-url", fleet.endpoint]
        run.notes.append(f"allocator: FleetIQ via fleetiq-local, {args.rooms + 16} game servers"
                         + (f", ClaimGameServer limited to {limit[0]:g}/s in bursts of "
                            f"{limit[1]}" if limit else ""))
    else:
        why = "" if has_fleetiq else " (`lobby serve` has no --fleetiq-group option yet)"
        run.notes.append(f"allocator: static{why}")
    if run.mode in ("redis", "cluster"):
        run.start_redis()
    node = run.start_node("node1", extra=extra, profiled=True)
    pool = run.start_drivers(driver_main, {
        "url": node.url, "rooms": args.rooms, "connect_concurrency": args.connect_concurrency,
    })
    t_setup = time.monotonic()
    rooms = sum(s["rooms"] for s in pool.command("setup", wait_s=run.budget(120)))
    run.notes.append(f"{rooms} full rooms ({rooms * ROOM_SIZE:,} clients) ready in "
                     f"{time.monotonic() - t_setup:.1f}s")
    t0_ns = time.monotonic_ns() + 300_000_000
    pool.broadcast("storm", {"t0_ns": t0_ns, "spread_s": args.spread, "rooms_total": rooms,
                             "wait_s": args.wait})
    results, usage = run.gather_measured(
        pool, "storm", run.budget(args.wait + RETRY_WAIT_S * 4 + 15), profile=(node, "storm"))
    lat = latency_ms(x for r in results for x in r["latency_ns"])
    last_rel = [x for r in results for x in r["last_rel_ns"]]
    stuck = sum(r["stuck"] for r in results)
    reply_errors: Counter[str] = Counter()
    for r in results:
        reply_errors.update(r["reply_errors"])
    all_done_s = round(max(last_rel) / 1e9, 3) if last_rel and not stuck else None
    step: dict[str, Any] = {
        "rooms": rooms,
        "spread_s": args.spread,
        "allocator": "fleetiq" if use_fleetiq else "static",
        "latency_ms": lat,
        "start_reply_ms": latency_ms(x for r in results for x in r["reply_ns"]),
        "all_started_after_s": all_done_s,
        "stuck_rooms": stuck,
        "start_reply_errors": dict(reply_errors),
        "session_start_failed_events": sum(r["start_failed_events"] for r in results),
        # Rooms that did not start, sent start_session once more after the storm:
        # "started" is a room that recovers, SESSION_NOT_WAITING one left wedged
        # in CONNECTING by a start that failed half-way.
        "retry_after_storm": merge_counts(r["retry"] for r in results),
        "usage": usage,
    }
    if run.redis is not None:
        step["redis_per_start"] = redis_per_op(
                usage["redis_commands"], rooms, run.redis_servers, usage.get("redis_cpu_seconds"))
    run.steps.append(step)
    row = {
        "rooms": rooms, "spread s": args.spread, "allocator": step["allocator"],
        "p50 ms": lat.get("p50"), "p99 ms": lat.get("p99"), "max ms": lat.get("max"),
        "all started s": all_done_s, "stuck": stuck,
        "errors": sum(reply_errors.values()),
        "retry ok": step["retry_after_storm"].get("started", 0) if stuck else None,
        "node cpu%": usage.get("node1_cpu_pct"),
    }
    if run.redis is not None:
        row["redis cpu%"] = usage.get("redis_cpu_pct")
    if use_fleetiq:
        row["fleetiq cpu%"] = usage.get("fleetiq_cpu_pct")
    row["driver cpu%"] = usage.get("driver_cpu_pct_total")
    row["others cpu%"] = usage.get("other_processes_cpu_pct")
    return [row]
