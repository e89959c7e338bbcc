"""fill: rooms of 8 (the host creates, 7 join), then held idle.

Each client count runs on a fresh node (and a fresh Redis) so that the RSS
figures start from the same empty process. The ramp stops at the first count
the node does not hold; the step records what went wrong (the drivers' error
kinds, the node's open files against its limit, "Too many open files" in its
log, whether it is still alive).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import (
    MAX_CLIENTS,
    Opener,
    Run,
    count_errors,
    make_room,
    share,
)
from bench.driver import Channel, quiet_gc, serve_commands
from bench.procs import listen_overflows, nofile_limits, redis_per_op, sample
from bench.report import latency_ms, merge_counts

ROOM_SIZE = 8
# Files a node has open besides its clients: listening socket, epoll, Redis
# connections (up to redis-py's pool of 100 under load), logs.
FD_HEADROOM = 128


async def driver_main(ch: Channel, params: dict[str, Any], shard: int, shards: int) -> None:
    opener = Opener(params["url"], params["connect_concurrency"], f"f{shard}-")

    async def fill(_: Any) -> dict[str, Any]:
        n = share(params["rooms"], shard, shards)
        t0 = time.monotonic_ns()
        results = await asyncio.gather(*(make_room(opener, ROOM_SIZE) for _ in range(n)),
                                       return_exceptions=True)
        t1 = time.monotonic_ns()
        first_error = next((r for r in results if isinstance(r, BaseException)), None)
        quiet_gc()
        return {
            "rooms": n,
            "rooms_ok": sum(not isinstance(r, BaseException) for r in results),
            "clients_open": sum(not c.closed for c in opener.clients),
            "errors": dict(count_errors(results)),
            "error_sample": repr(first_error)[:300] if first_error else None,
            "t_start": t0,
            "t_end": t1,
            "connect": latency_ms(opener.connect_ns),
        }

    async def check(_: Any) -> dict[str, Any]:
        # Every client still connected must answer: "held" means usable.
        live = [c for c in opener.clients if not c.closed]
        sem = asyncio.Semaphore(256)

        async def ping(c: Any) -> None:
            async with sem:
                await c.request("ping", wait_s=20)

        results = await asyncio.gather(*(ping(c) for c in live), return_exceptions=True)
        return {"answered": sum(not isinstance(r, BaseException) for r in results),
                "errors": dict(count_errors(results))}

    try:
        await serve_commands(ch, {"fill": fill, "check": check})
    finally:
        opener.abort_all()


def _limit_reason(run: Run, node: Any, fills: list[dict[str, Any]], fds: int | None,
                  clients: int) -> str:
    reasons = []
    if not node.alive():
        reasons.append(f"node exited with {node.proc.returncode}")
    emfile = node.log_grep(r"Too many open files|out of system resource")
    if emfile:
        reasons.append(f"node logged 'Too many open files' {emfile}x: RLIMIT_NOFILE "
                       f"(hard limit here {nofile_limits()[1]:,}) caps a node's sockets")
    elif fds is not None and fds >= nofile_limits()[1] - 64:
        reasons.append(f"node at {fds:,} open files of its {nofile_limits()[1]:,} limit")
    errors = merge_counts(f["errors"] for f in fills)
    if errors:
        sample_err = next((f["error_sample"] for f in fills if f["error_sample"]), "")
        reasons.append(f"client errors {errors} (e.g. {sample_err})")
    return "; ".join(reasons) or f"only part of the {clients:,} clients were held"


def run(run: Run) -> list[dict[str, Any]]:
    args = run.args
    summary: list[dict[str, Any]] = []
    held_max = 0
    counts = list(args.clients)
    fd_cap = (nofile_limits()[1] - FD_HEADROOM) // ROOM_SIZE * ROOM_SIZE
    tried_cap = False
    while counts:
        clients = counts.pop(0)
        if clients > MAX_CLIENTS:
            run.notes.append(f"{clients:,} clients: skipped, above the {MAX_CLIENTS:,} cap")
            break
        rooms = clients // ROOM_SIZE
        clients = rooms * ROOM_SIZE
        if run.left() < 20:
            run.notes.append(f"{clients:,} clients: skipped, --deadline is near")
            break
        if run.mode in ("redis", "cluster"):
            run.start_redis()
        node = run.start_node("node1", profiled=True)
        pool = run.start_drivers(driver_main, {
            "url": node.url, "rooms": rooms, "connect_concurrency": args.connect_concurrency,
        })
        try:
            time.sleep(0.5)  # let the fresh node settle before its baseline
            base = run.snapshot()
            if args.profile:
                run.start_profile(node, f"fill{clients}")
            overflows = listen_overflows()
            fills = pool.command("fill", wait_s=run.budget(150))
            after_overflows = listen_overflows()
            t_fill = (max(f["t_end"] for f in fills) - min(f["t_start"] for f in fills)) / 1e9
            filled = run.snapshot()
            time.sleep(min(args.hold, max(0.0, run.left() - 30)))
            held = run.snapshot()
            fds = run.node_fds().get("node1")
            checks = pool.command("check", wait_s=run.budget(60))
            if args.profile:
                run.stop_profile(f"fill{clients}")
            after = sample(node.pid)
        finally:
            run.stop_drivers()
        open_clients = sum(f["clients_open"] for f in fills)
        answered = sum(c["answered"] for c in checks)
        b_rss = base.nodes["node1"].rss_kib if base.nodes["node1"] else 0
        h_rss = held.nodes["node1"].rss_kib if held.nodes["node1"] else 0
        usage = run.usage(base, filled)
        ok = answered == clients
        step: dict[str, Any] = {
            "clients": clients,
            "rooms": rooms,
            "rooms_ok": sum(f["rooms_ok"] for f in fills),
            "clients_open": open_clients,
            "answered_ping": answered,
            "held": ok,
            "fill_seconds": round(t_fill, 2),
            "connect_ms": [f["connect"] for f in fills],
            # A full accept queue drops the SYN; the client retries 1 s later.
            "listen_overflows": (after_overflows - overflows
                                 if overflows is not None and after_overflows is not None
                                 else None),
            "rss_base_mib": round(b_rss / 1024, 1),
            "rss_held_mib": round(h_rss / 1024, 1),
            "rss_peak_mib": round(after.hwm_kib / 1024, 1) if after else None,
            "rss_per_client_kib": round((h_rss - b_rss) / max(answered, 1), 1),
            "node_fds": fds,
            "usage_during_fill": usage,
        }
        if run.redis is not None:
            step["redis_per_client"] = redis_per_op(
                usage["redis_commands"], clients, run.redis_servers, usage.get("redis_cpu_seconds"))
            step["redis_rss_mib"] = usage.get("redis_rss_mib")
        if not ok:
            step["limited_by"] = _limit_reason(run, node, fills, fds, clients)
        run.steps.append(step)
        summary.append({
            "clients": clients, "held": answered, "fill s": step["fill_seconds"],
            "clients/s": round(clients / t_fill) if t_fill else None,
            "rss base MiB": step["rss_base_mib"], "rss held MiB": step["rss_held_mib"],
            "KiB/client": step["rss_per_client_kib"],
            "connect p99 ms": max((f["connect"].get("p99", 0.0) for f in fills), default=None),
            "node cpu% (fill)": usage.get("node1_cpu_pct"),
            "driver cpu% (fill)": usage.get("driver_cpu_pct_total"),
        })
        run.stop_node(node)
        if run.redis is not None:
            run.redis.stop()
            run.redis = None
        if ok:
            held_max = max(held_max, answered)
            continue
        run.notes.append(f"{clients:,} clients not held: {step['limited_by']}")
        if "RLIMIT_NOFILE" in step["limited_by"] and clients > fd_cap and not tried_cap:
            # Show what the node holds just under its open-file limit.
            tried_cap = True
            counts = [fd_cap]
            run.notes.append(f"retrying at {fd_cap:,} clients, just under the open-file limit")
            continue
        break
    run.notes.append(f"largest client count held by one node: {held_max:,}")
    return summary
