"""cold: a player opens the menu, joins a room, leaves and closes, at a fixed rate.

Every cycle is what a player's first seconds cost a node: a new TCP connection,
the WebSocket handshake, `hello`, `join_session` into a room of 7 residents,
`leave_session`, and the closing handshake. (churn measures the same join on a
socket that is already open.) Latency is from the connect to the moment the
last of the room's 7 residents has the newcomer's `player_joined`; the parts
(connect + handshake + hello, the join, the leave, the close) are kept apart
too. The load is open-loop like churn: room i of N starts a cycle every N/rate
seconds at its own phase, and a slot that comes while the room's previous
cycle is still running is counted as late.

Node CPU per cycle is the node's CPU time over the measured window divided by
the cycles completed in it (a `--workers` node: its whole process tree).
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

RESIDENTS = 7
CYCLE_TIMEOUT_S = 5.0
# The most cold joins a second at which a step still counts as sustained.
SUSTAINED_P99_MS = 50.0
SUSTAINED_SHARE = 0.95


class ColdRoom:
    __slots__ = ("_done", "_kind", "_last", "_player", "_seen", "broken", "n", "residents",
                 "sid")

    def __init__(self, sid: str, residents: list[BenchClient]) -> None:
        self.sid = sid
        self.residents = residents
        self.broken = False
        self.n = 0
        self._kind = ""
        self._player = ""
        self._seen = 0
        self._last = 0
        self._done: asyncio.Future[int] | None = None
        for r in residents:
            r.on_event = self._on_event

    def arm(self, kind: str, player_id: str) -> asyncio.Future[int]:
        self._kind, self._player, self._seen, self._last = kind, player_id, 0, 0
        self._done = asyncio.get_running_loop().create_future()
        return self._done

    def _on_event(self, client: BenchClient, ev: dict[str, Any], t_ns: int) -> None:
        if ev.get("type") != self._kind or ev.get("player_id") != self._player:
            return
        self._seen += 1
        if t_ns > self._last:
            self._last = t_ns
        if self._seen == len(self.residents) and self._done is not None \
                and not self._done.done():
            self._done.set_result(self._last)


class _Tally:
    def __init__(self) -> None:
        self.total_ns: list[int] = []  # connect -> 7th resident has player_joined
        self.open_ns: list[int] = []  # connect + handshake + hello reply
        self.join_ns: list[int] = []  # join sent -> 7th resident has player_joined
        self.leave_ns: list[int] = []  # leave sent -> 7th resident has player_left
        self.close_ns: list[int] = []  # close frame sent -> TCP closed by the server
        self.cycles = 0
        self.late = 0
        self.errors: Counter[str] = Counter()


async def _await_event(room: ColdRoom, client: BenchClient, kind: str, rtype: str,
                       **fields: Any) -> int:
    """Send `rtype`; return the time the last resident saw `kind` about `client`."""
    done = room.arm(kind, client.player_id)
    _, fut = client.send(rtype, **fields)
    _, reply = await fut
    if not reply.get("ok"):
        raise RequestFailed(reply)
    return await done


async def _cycle(room: ColdRoom, url: str, name: str, tally: _Tally, measured: bool) -> None:
    t0 = time.monotonic_ns()
    client = await BenchClient.open(url, name)
    try:
        t_open = time.monotonic_ns()
        t_joined = await _await_event(room, client, "player_joined", "join_session",
                                      session_id=room.sid)
        t_leave = time.monotonic_ns()
        t_left = await _await_event(room, client, "player_left", "leave_session")
        t_close = time.monotonic_ns()
        await client.close()
        t_closed = time.monotonic_ns()
    except BaseException:
        client.abort()
        raise
    if measured:
        tally.total_ns.append(t_joined - t0)
        tally.open_ns.append(t_open - t0)
        tally.join_ns.append(t_joined - t_open)
        tally.leave_ns.append(t_left - t_leave)
        tally.close_ns.append(t_closed - t_close)
        tally.cycles += 1


async def _room_loop(room: ColdRoom, url: str, prefix: str, first_ns: int, period_ns: int,
                     warm_ns: int, end_ns: int, tally: _Tally) -> None:
    slot = first_ns
    while slot < end_ns:
        await sleep_until(slot)
        room.n += 1
        try:
            async with asyncio.timeout(CYCLE_TIMEOUT_S):
                await _cycle(room, url, f"{prefix}{room.n}", tally, slot >= warm_ns)
        except (TimeoutError, RequestFailed, ConnectionError, OSError) as exc:
            tally.errors[error_name(exc)] += 1
            room.broken = True  # its state is unknown now: off the schedule
            return
        slot, late = next_slot(slot, period_ns, warm_ns)
        tally.late += late


async def driver_main(ch: Channel, params: dict[str, Any], shard: int, shards: int) -> None:
    opener = Opener(params["url"], params["connect_concurrency"], f"r{shard}-")
    rooms: list[ColdRoom] = []

    async def setup(_: Any) -> dict[str, Any]:
        n = share(params["rooms"], shard, shards)

        async def build() -> ColdRoom:
            sid, residents = await make_room(opener, RESIDENTS)
            return ColdRoom(sid, residents)

        rooms.extend(await asyncio.gather(*(build() for _ in range(n))))
        quiet_gc()
        return {"rooms": len(rooms), "clients": len(rooms) * RESIDENTS}

    async def measure(data: dict[str, Any]) -> dict[str, Any]:
        rate = data["rate"] / shards
        live = [r for r in rooms if not r.broken]
        tally = _Tally()
        if not live:
            tally.errors["no_rooms_left"] += 1
        else:
            n = len(live)
            period_ns = int(n / rate * 1e9)
            start_ns = data["start_ns"]
            warm_ns = start_ns + int(data["warmup_s"] * 1e9)
            end_ns = warm_ns + int(data["duration_s"] * 1e9)
            offsets = [int(period_ns * (i + shard / shards) / n) for i in range(n)]
            prefix = f"c{shard}-{data['step']}-"
            await asyncio.gather(*(
                _room_loop(room, params["url"], f"{prefix}{i}-", start_ns + off, period_ns,
                           warm_ns, end_ns, tally)
                for i, (room, off) in enumerate(zip(live, offsets, strict=True))
            ))
        return {"total_ns": tally.total_ns, "open_ns": tally.open_ns,
                "join_ns": tally.join_ns, "leave_ns": tally.leave_ns,
                "close_ns": tally.close_ns, "cycles": tally.cycles, "late": tally.late,
                "errors": dict(tally.errors)}

    try:
        await serve_commands(ch, {"setup": setup, "measure": measure})
    finally:
        opener.abort_all()


def sustained(steps: list[dict[str, Any]]) -> float | None:
    """The highest achieved rate of a step that kept up (errors 0, achieved at least
    95% of its target, p99 within 50 ms)."""
    best = None
    for s in steps:
        p99 = s["cold_join_ms"].get("p99")
        if (not s["errors"] and p99 is not None and p99 <= SUSTAINED_P99_MS
                and s["achieved_rate"] >= SUSTAINED_SHARE * s["target_rate"]):
            best = max(best or 0.0, s["achieved_rate"])
    return best


def run(run: Run) -> list[dict[str, Any]]:
    args = run.args
    if args.rooms * (RESIDENTS + 1) > 20_000:
        raise SystemExit("cold: at most 2,500 rooms")
    if run.mode == "redis":
        run.start_redis()
    node = run.start_node("node1", profiled=True)
    pool = run.start_drivers(driver_main, {
        "rooms": args.rooms, "url": node.url, "connect_concurrency": args.connect_concurrency,
    })
    t0 = time.monotonic()
    setup = pool.command("setup", wait_s=run.budget(120))
    run.notes.append(
        f"set-up: {sum(s['rooms'] for s in setup)} rooms, {sum(s['clients'] for s in setup)} "
        f"resident sockets in {time.monotonic() - t0:.1f}s")
    summary: list[dict[str, Any]] = []
    for i, rate in enumerate(args.rate):
        label = f"rate{rate}"
        if run.left() < args.warmup + args.duration + 5:
            run.notes.append(f"rate {rate}: skipped, not enough time left before --deadline")
            break
        start_ns = time.monotonic_ns() + 200_000_000
        pool.broadcast("measure", {"rate": rate, "start_ns": start_ns, "step": i,
                                   "warmup_s": args.warmup, "duration_s": args.duration})
        time.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9 + args.warmup))
        profiled = i == len(args.rate) - 1
        results, usage = run.gather_measured(
            pool, "measure", run.budget(args.duration + CYCLE_TIMEOUT_S + 15),
            profile=(node, label) if profiled else None)
        cycles = sum(r["cycles"] for r in results)
        errors = merge_counts(r["errors"] for r in results)
        late = sum(r["late"] for r in results)
        cpu = usage.get("node1_cpu_pct")
        seconds = usage.get("seconds") or args.duration
        cpu_ms = (round(cpu / 100 * seconds / cycles * 1000, 3)
                  if cpu is not None and cycles else None)
        step: dict[str, Any] = {
            "target_rate": rate,
            "achieved_rate": round(cycles / args.duration, 1),
            "cycles": cycles,
            "late": late,
            "errors": errors,
            "cold_join_ms": latency_ms(x for r in results for x in r["total_ns"]),
            "open_hello_ms": latency_ms(x for r in results for x in r["open_ns"]),
            "join_ms": latency_ms(x for r in results for x in r["join_ns"]),
            "leave_ms": latency_ms(x for r in results for x in r["leave_ns"]),
            "close_ms": latency_ms(x for r in results for x in r["close_ns"]),
            "node_cpu_ms_per_cycle": cpu_ms,
            "usage": usage,
            "profiled": profiled and args.profile,
        }
        if run.redis is not None:
            step["redis_per_cycle"] = redis_per_op(usage["redis_commands"], cycles)
        run.steps.append(step)
        lat = step["cold_join_ms"]
        row = {
            "target/s": rate, "achieved/s": step["achieved_rate"], "late": late,
            "errors": sum(errors.values()),
            "p50 ms": lat.get("p50"), "p95 ms": lat.get("p95"), "p99 ms": lat.get("p99"),
            "max ms": lat.get("max"),
            "hello p99": step["open_hello_ms"].get("p99"),
            "node cpu%": cpu, "of it sys%": usage.get("node1_sys_pct"), "cpu ms/cycle": cpu_ms,
        }
        if run.redis is not None:
            row["redis cpu%"] = usage.get("redis_cpu_pct")
            row["rt/cycle"] = step["redis_per_cycle"].get("round_trips_per_op")
        row["driver cpu%"] = usage.get("driver_cpu_pct_total")
        row["others cpu%"] = usage.get("other_processes_cpu_pct")
        summary.append(row)
        if errors:
            run.notes.append(f"rate {rate}: errors {errors}; stopping the ramp")
            break
    best = sustained(run.steps)
    run.notes.append(
        f"most cold joins/s sustained (errors 0, >= {SUSTAINED_SHARE:.0%} of the target, "
        f"p99 <= {SUSTAINED_P99_MS:g} ms): {best if best is not None else 'none of the steps'}")
    return summary
