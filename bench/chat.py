"""chat: rooms of 8 talking, each room at a fixed rate of messages per second.

Latency is from a member's `send_chat` send to the moment the last of the
room's 8 sockets (the sender's included) has the `chat_message`. All 8
sockets of a room live in one driver, so both ends are read on one clock. The
load is open-loop as in churn: room i of N sends every 1/rate seconds at its own
phase, and a send that would start while the room's previous message is still
on its way is counted as late, not queued. Senders take turns, so no player
comes near the per-player chat rate (5 per 5 s).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from bench.client import BenchClient, RequestFailed
from bench.common import Opener, Run, error_name, make_room, next_slot, share, sleep_until
from bench.driver import Channel, quiet_gc, serve_commands
from bench.procs import redis_per_op
from bench.report import latency_ms, merge_counts

MEMBERS = 8
CYCLE_TIMEOUT_S = 5.0


class ChatRoom:
    __slots__ = ("_done", "_last", "_seen", "_text", "broken", "members", "sid", "turn")

    def __init__(self, sid: str, members: list[BenchClient]) -> None:
        self.sid = sid
        self.members = members
        self.broken = False
        self.turn = 0
        self._text = ""
        self._seen = 0
        self._last = 0
        self._done: asyncio.Future[int] | None = None
        for m in members:
            m.on_event = self._on_event

    def arm(self, text: str) -> asyncio.Future[int]:
        self._text, self._seen, self._last = text, 0, 0
        self._done = asyncio.get_running_loop().create_future()
        return self._done

    def _on_event(self, client: BenchClient, ev: dict[str, Any], t_ns: int) -> None:
        if ev.get("type") != "chat_message" or ev.get("text") != self._text:
            return
        self._seen += 1
        if t_ns > self._last:
            self._last = t_ns
        if self._seen == len(self.members) and self._done is not None and not self._done.done():
            self._done.set_result(self._last)


async def _one(room: ChatRoom, text: str) -> tuple[int, int]:
    """One message: (send -> all 8 received, send -> reply)."""
    done = room.arm(text)
    sender = room.members[room.turn % len(room.members)]
    room.turn += 1
    t_send, fut = sender.send("send_chat", text=text)
    t_reply, reply = await fut
    if not reply.get("ok"):
        raise RequestFailed(reply)
    t_last = await done
    return t_last - t_send, t_reply - t_send


async def _room_loop(room: ChatRoom, first_ns: int, period_ns: int, warm_ns: int, end_ns: int,
                     tally: dict[str, Any]) -> None:
    slot = first_ns
    n = 0
    while slot < end_ns:
        await sleep_until(slot)
        n += 1
        try:
            async with asyncio.timeout(CYCLE_TIMEOUT_S):
                fanout, reply = await _one(room, f"{room.sid} says {n}: good luck, have fun")
        except (TimeoutError, RequestFailed, ConnectionError) as exc:
            tally["errors"][error_name(exc)] += 1
            room.broken = True
            return
        if slot >= warm_ns:
            tally["fanout_ns"].append(fanout)
            tally["reply_ns"].append(reply)
        slot, late = next_slot(slot, period_ns, warm_ns)
        tally["late"] += late


async def driver_main(ch: Channel, params: dict[str, Any], shard: int, shards: int) -> None:
    opener = Opener(params["url"], params["connect_concurrency"], f"c{shard}-")
    rooms: list[ChatRoom] = []

    async def setup(_: Any) -> dict[str, Any]:
        n = share(params["rooms"], shard, shards)

        async def build() -> ChatRoom:
            sid, members = await make_room(opener, MEMBERS)
            return ChatRoom(sid, members)

        rooms.extend(await asyncio.gather(*(build() for _ in range(n))))
        quiet_gc()
        return {"rooms": len(rooms), "clients": len(rooms) * MEMBERS}

    async def measure(data: dict[str, Any]) -> dict[str, Any]:
        live = [r for r in rooms if not r.broken]
        tally: dict[str, Any] = {"fanout_ns": [], "reply_ns": [], "late": 0, "errors": Counter()}
        if not live:
            return {**tally, "errors": {"no_rooms_left": 1}}
        period_ns = int(1e9 / data["per_room"])
        start_ns = data["start_ns"]
        warm_ns = start_ns + int(data["warmup_s"] * 1e9)
        end_ns = warm_ns + int(data["duration_s"] * 1e9)
        n = len(live)
        # Rooms (and shards) spread their phases so the aggregate arrivals stay even.
        offsets = [int(period_ns * (i + shard / shards) / n) for i in range(n)]
        await asyncio.gather(*(
            _room_loop(room, start_ns + off, period_ns, warm_ns, end_ns, tally)
            for room, off in zip(live, offsets, strict=True)
        ))
        return {**tally, "errors": dict(tally["errors"])}

    try:
        await serve_commands(ch, {"setup": setup, "measure": measure})
    finally:
        opener.abort_all()


def run(run: Run) -> list[dict[str, Any]]:
    args = run.args
    if args.rooms * MEMBERS > 20_000:
        raise SystemExit("chat: at most 2,500 rooms (20,000 sockets)")
    if run.mode in ("redis", "cluster"):
        run.start_redis()
    node1 = run.start_node("node1", profiled=True)
    params = {"rooms": args.rooms, "url": node1.url,
              "connect_concurrency": args.connect_concurrency}
    pool = run.start_drivers(driver_main, params)
    t0 = time.monotonic()
    setup = pool.command("setup", wait_s=run.budget(120))
    run.notes.append(
        f"set-up: {sum(s['rooms'] for s in setup)} rooms, {sum(s['clients'] for s in setup)} "
        f"sockets in {time.monotonic() - t0:.1f}s")
    summary: list[dict[str, Any]] = []
    for i, per_room in enumerate(args.rate):
        step_s = args.warmup + args.duration
        if run.left() < step_s + 5:
            run.notes.append(f"rate {per_room}: skipped, not enough time left before --deadline")
            break
        start_ns = time.monotonic_ns() + 200_000_000
        pool.broadcast("measure", {"per_room": per_room, "start_ns": start_ns,
                                   "warmup_s": args.warmup, "duration_s": args.duration})
        time.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9 + args.warmup))
        profiled = i == len(args.rate) - 1
        results, usage = run.gather_measured(
            pool, "measure", run.budget(args.duration + CYCLE_TIMEOUT_S + 15),
            profile=(node1, f"rate{per_room}") if profiled else None)
        fanout = [x for r in results for x in r["fanout_ns"]]
        errors = merge_counts(r["errors"] for r in results)
        late = sum(r["late"] for r in results)
        sent = len(fanout)
        step = {
            "per_room_rate": per_room,
            "target_rate": per_room * args.rooms,
            "achieved_rate": round(sent / args.duration, 1),
            "messages": sent,
            "late": late,
            "errors": errors,
            "fanout_latency_ms": latency_ms(fanout),
            "reply_ms": latency_ms(x for r in results for x in r["reply_ns"]),
            "usage": usage,
            "profiled": profiled and args.profile,
        }
        if run.redis is not None:
            step["redis_per_message"] = redis_per_op(
                usage["redis_commands"], sent, run.redis_servers, usage.get("redis_cpu_seconds"))
        run.steps.append(step)
        lat = step["fanout_latency_ms"]
        row = {
            "msgs/s/room": per_room, "target/s": step["target_rate"],
            "achieved/s": step["achieved_rate"], "late": late, "errors": sum(errors.values()),
            "p50 ms": lat.get("p50"), "p95 ms": lat.get("p95"), "p99 ms": lat.get("p99"),
            "max ms": lat.get("max"), "node1 cpu%": usage.get("node1_cpu_pct"),
        }
        if run.redis is not None:
            row["redis cpu%"] = usage.get("redis_cpu_pct")
            row["rt/msg"] = step["redis_per_message"].get("round_trips_per_op")
        row["driver cpu%"] = usage.get("driver_cpu_pct_total")
        summary.append(row)
        if errors:
            run.notes.append(f"rate {per_room}: errors {errors}; stopping the ramp")
            break
    return summary
