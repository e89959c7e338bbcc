"""churn and cross-node: an 8th player joins and leaves rooms of 7, at a fixed rate.

Join latency is from the joiner's `join_session` send to the moment the last
of the room's 7 other sockets has its `player_joined` (leave latency likewise
with `player_left`). All 8 sockets of a room live in one driver, so both ends
are read on one clock. The load is open-loop: room i of N starts a join every
N/rate seconds at its own phase; a join that would start while the room's
previous cycle is still running is counted as late, not queued, so that a slow
server shows up as missed rate rather than hidden in the latency figures.

cross-node is the same load with the 7 members on node 1 and the joiner on
node 2 (two nodes, one Redis): every event crosses Redis pub/sub.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

from bench.client import BenchClient, RequestFailed
from bench.common import (
    Opener,
    Run,
    error_name,
    make_room,
    next_slot,
    room_attributes,
    share,
    sleep_until,
)
from bench.driver import Channel, quiet_gc, serve_commands
from bench.procs import redis_per_op
from bench.report import latency_ms, merge_counts

MEMBERS = 7
CYCLE_TIMEOUT_S = 5.0


class ChurnRoom:
    __slots__ = ("_done", "_kind", "_last", "_seen", "broken", "joiner", "members", "sid")

    def __init__(self, sid: str, members: list[BenchClient], joiner: BenchClient) -> None:
        self.sid = sid
        self.members = members
        self.joiner = joiner
        self.broken = False
        self._kind = ""
        self._seen = 0
        self._last = 0
        self._done: asyncio.Future[int] | None = None
        for m in members:
            m.on_event = self._on_event

    def arm(self, kind: str) -> asyncio.Future[int]:
        """Expect `kind` about the joiner on every member; resolves to the last receive time."""
        self._kind, self._seen, self._last = kind, 0, 0
        self._done = asyncio.get_running_loop().create_future()
        return self._done

    def _on_event(self, client: BenchClient, ev: dict[str, Any], t_ns: int) -> None:
        if ev.get("type") != self._kind or ev.get("player_id") != self.joiner.player_id:
            return
        self._seen += 1
        if t_ns > self._last:
            self._last = t_ns
        if self._seen == len(self.members) and self._done is not None and not self._done.done():
            self._done.set_result(self._last)


async def _one(room: ChurnRoom, kind: str, rtype: str, events: bool = True,
               **fields: Any) -> tuple[int, int]:
    """One request whose event all members must see: (fan-out latency, reply latency).
    Without `events`, only the reply is awaited (both figures are its latency)."""
    done = room.arm(kind)
    t_send, fut = room.joiner.send(rtype, **fields)
    t_reply, reply = await fut
    if not reply.get("ok"):
        raise RequestFailed(reply)
    if not events:
        return t_reply - t_send, t_reply - t_send
    t_last = await done
    return t_last - t_send, t_reply - t_send


class _Tally:
    def __init__(self) -> None:
        self.join_ns: list[int] = []
        self.join_at_ns: list[int] = []  # when each sampled join was sent
        self.join_reply_ns: list[int] = []
        self.leave_ns: list[int] = []
        self.late = 0
        self.errors: Counter[str] = Counter()


async def _room_loop(room: ChurnRoom, first_ns: int, period_ns: int, warm_ns: int, end_ns: int,
                     tally: _Tally, events: bool = True) -> None:
    slot = first_ns
    while slot < end_ns:
        await sleep_until(slot)
        try:
            async with asyncio.timeout(CYCLE_TIMEOUT_S):
                join, join_reply = await _one(room, "player_joined", "join_session", events,
                                              session_id=room.sid)
                leave, _ = await _one(room, "player_left", "leave_session", events)
        except (TimeoutError, RequestFailed, ConnectionError) as exc:
            tally.errors[error_name(exc)] += 1
            # The room's state is unknown now (the joiner may still be in it):
            # it leaves the schedule rather than skew later samples.
            room.broken = True
            return
        if slot >= warm_ns:
            tally.join_ns.append(join)
            tally.join_at_ns.append(slot)
            tally.join_reply_ns.append(join_reply)
            tally.leave_ns.append(leave)
        slot, late = next_slot(slot, period_ns, warm_ns)
        tally.late += late


async def driver_main(ch: Channel, params: dict[str, Any], shard: int, shards: int) -> None:
    member_opener = Opener(params["member_url"], params["connect_concurrency"], f"m{shard}-")
    joiner_opener = Opener(params["joiner_url"], params["connect_concurrency"], f"j{shard}-")
    rooms: list[ChurnRoom] = []

    async def setup(_: Any) -> dict[str, Any]:
        n = share(params["rooms"], shard, shards)

        rng = random.Random(shard)

        async def build() -> ChurnRoom:
            attrs = room_attributes(rng) if params.get("attributes") else None
            sid, members = await make_room(member_opener, MEMBERS, attributes=attrs)
            return ChurnRoom(sid, members, await joiner_opener.open())

        rooms.extend(await asyncio.gather(*(build() for _ in range(n))))
        quiet_gc()
        return {"rooms": len(rooms), "clients": len(rooms) * (MEMBERS + 1)}

    async def measure(data: dict[str, Any]) -> dict[str, Any]:
        rate = data["rate"] / shards  # this shard's joins per second
        live = [r for r in rooms if not r.broken]
        n = len(live)
        if n == 0:
            return {"join_ns": [], "join_at_ns": [], "join_reply_ns": [], "leave_ns": [], "late": 0,
                    "errors": {"no_rooms_left": 1}}
        period_ns = int(n / rate * 1e9)
        start_ns = data["start_ns"]
        warm_ns = start_ns + int(data["warmup_s"] * 1e9)
        end_ns = warm_ns + int(data["duration_s"] * 1e9)
        tally = _Tally()
        # Shards interleave their phases so the aggregate arrivals stay even.
        offsets = [int(period_ns * (i + shard / shards) / n) for i in range(n)]
        await asyncio.gather(*(
            _room_loop(room, start_ns + off, period_ns, warm_ns, end_ns, tally,
                       not params.get("replies_only"))
            for room, off in zip(live, offsets, strict=True)
        ))
        return {"join_ns": tally.join_ns, "join_at_ns": tally.join_at_ns,
                "join_reply_ns": tally.join_reply_ns,
                "leave_ns": tally.leave_ns, "late": tally.late, "errors": dict(tally.errors)}

    try:
        await serve_commands(ch, {"setup": setup, "measure": measure})
    finally:
        member_opener.abort_all()
        joiner_opener.abort_all()


def _by_second(at_ns: list[int], lat_ns: list[int], start_ns: int, args: Any) -> list[float]:
    """p99 of the joins sent in each second of the window: one bad second (a
    stall) reads differently from a tail spread over the whole run."""
    warm_ns = start_ns + int(args.warmup * 1e9)
    buckets: dict[int, list[int]] = {}
    for at, lat in zip(at_ns, lat_ns, strict=True):
        buckets.setdefault(int((at - warm_ns) // 1_000_000_000), []).append(lat)
    return [latency_ms(buckets[k]).get("p99", 0.0) for k in sorted(buckets)]


def run(run: Run, cross_node: bool) -> list[dict[str, Any]]:
    args = run.args
    if args.rooms * (MEMBERS + 1) > 20_000:
        raise SystemExit("churn: at most 2,500 rooms (20,000 sockets)")
    if cross_node or run.mode in ("redis", "cluster"):
        run.start_redis()
    node1 = run.start_node("node1", profiled=True)
    node2 = run.start_node("node2") if cross_node else node1
    if cross_node:
        run.notes.append("members on node1, joiners on node2, "
                          + ("a Redis Cluster" if run.mode == "cluster" else "one Redis"))
    params = {
        "rooms": args.rooms, "member_url": node1.url, "joiner_url": node2.url,
        "connect_concurrency": args.connect_concurrency,
        "attributes": getattr(args, "attributes", False),
        "replies_only": args.replies_only,
    }
    if args.replies_only:
        run.notes.append("--replies-only: a cycle waits for the joiner's replies, not for the "
                         "members' events (latencies are reply latencies)")
    pool = run.start_drivers(driver_main, params)
    t0 = time.monotonic()
    setup = pool.command("setup", wait_s=run.budget(120))
    run.notes.append(
        f"set-up: {sum(s['rooms'] for s in setup)} rooms, {sum(s['clients'] for s in setup)} "
        f"sockets in {time.monotonic() - t0:.1f}s")
    summary: list[dict[str, Any]] = []
    rates = args.rate
    for i, rate in enumerate(rates):
        label = f"rate{rate}"
        step_s = args.warmup + args.duration
        if run.left() < step_s + 5:
            run.notes.append(f"rate {rate}: skipped, not enough time left before --deadline")
            break
        start_ns = time.monotonic_ns() + 200_000_000
        pool.broadcast("measure", {"rate": rate, "start_ns": start_ns,
                                   "warmup_s": args.warmup, "duration_s": args.duration})
        # CPU is sampled over the measured part only, after the warm-up.
        time.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9 + args.warmup))
        profiled = i == len(rates) - 1
        results, usage = run.gather_measured(
            pool, "measure", run.budget(args.duration + CYCLE_TIMEOUT_S + 15),
            profile=(node1, label) if profiled else None)
        join_ns = [x for r in results for x in r["join_ns"]]
        joins = len(join_ns)
        errors = merge_counts(r["errors"] for r in results)
        late = sum(r["late"] for r in results)
        step = {
            "target_rate": rate,
            "achieved_rate": round(joins / args.duration, 1),
            "joins": joins,
            "late": late,
            "errors": errors,
            "join_latency_ms": latency_ms(join_ns),
            "join_p99_ms_by_second": _by_second(
                [a for r in results for a in r["join_at_ns"]], join_ns, start_ns, args),
            "join_reply_ms": latency_ms(x for r in results for x in r["join_reply_ns"]),
            "leave_latency_ms": latency_ms(x for r in results for x in r["leave_ns"]),
            "usage": usage,
            "profiled": profiled and args.profile,
        }
        if run.redis is not None:
            step["redis_per_join_leave"] = redis_per_op(
                usage["redis_commands"], joins, run.redis_servers, usage.get("redis_cpu_seconds"))
        run.steps.append(step)
        lat = step["join_latency_ms"]
        row = {
            "target/s": rate, "achieved/s": step["achieved_rate"], "late": late,
            "errors": sum(errors.values()),
            "p50 ms": lat.get("p50"), "p95 ms": lat.get("p95"), "p99 ms": lat.get("p99"),
            "max ms": lat.get("max"),
            "node1 cpu%": usage.get("node1_cpu_pct"),
            "of it sys%": usage.get("node1_sys_pct"),
        }
        if cross_node:
            row["node2 cpu%"] = usage.get("node2_cpu_pct")
        if run.redis is not None:
            row["redis cpu%"] = usage.get("redis_cpu_pct")
            row["rt/join+leave"] = step["redis_per_join_leave"].get("round_trips_per_op")
            row["script us"] = step["redis_per_join_leave"].get("evalsha_usec_per_call")
            row["redis us/op"] = step["redis_per_join_leave"].get("cpu_usec_per_op")
        row["driver cpu%"] = usage.get("driver_cpu_pct_total")
        row["others cpu%"] = usage.get("other_processes_cpu_pct")
        summary.append(row)
        if errors:
            run.notes.append(f"rate {rate}: errors {errors}; stopping the ramp")
            break
    return summary

