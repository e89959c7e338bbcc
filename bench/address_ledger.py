"""What the lobby-wide socket count per address (lobby.addresses.AddressLedger)
costs a WebSocket connect, A/B in one process and one run.

python -m bench.address_ledger [--sockets 1000] [--burst 2000] [--concurrency 64] [--rounds 3]

Starts a redis-server (bench.procs.RedisProc) and one lobby node in Redis mode in
this process, then alternates, `rounds` times: the node as it runs (the ledger:
one store round trip per upgrade, releases batched) and the same node with the
gate's ledger switched off (the per-node count only). Each phase times SOCKETS
sequential connects + close, then BURST connects CONCURRENCY at a time (all held,
then closed), and counts Redis commands per socket (INFO commandstats). Bounded;
stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from bench.procs import RedisProc, command_deltas
from lobby.app import LobbyNode
from lobby.config import Settings


async def _sequential(url: str, n: int) -> list[float]:
    took = []
    for _ in range(n):
        began = time.perf_counter()
        ws = await connect(url, compression=None)
        took.append(time.perf_counter() - began)
        await ws.close()
    return took


async def _burst(url: str, n: int, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one() -> Any:
        async with gate:
            return await connect(url, compression=None, open_timeout=30)

    began = time.perf_counter()
    sockets = await asyncio.gather(*(one() for _ in range(n)))
    took = time.perf_counter() - began
    await asyncio.gather(*(ws.close() for ws in sockets))
    return took


async def _phase(node: LobbyNode, redis: RedisProc, args: argparse.Namespace) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{node.port}/ws"
    before = redis.command_stats()
    seq = await _sequential(url, args.sockets)
    burst_s = await _burst(url, args.burst, args.concurrency)
    # Let the last releases go out before counting commands.
    await asyncio.sleep(0.2)
    deltas = command_deltas(before, redis.command_stats())
    sockets = args.sockets + args.burst
    seq.sort()
    return {
        "connect_p50_ms": round(statistics.median(seq) * 1000, 3),
        "connect_p99_ms": round(seq[int(len(seq) * 0.99) - 1] * 1000, 3),
        "burst_per_s": round(args.burst / burst_s),
        "redis_calls_per_socket": {k: round(v / sockets, 2) for k, v in deltas.items()
                                   if not k.endswith("#usec")},
        "redis_usec_per_socket": round(
            sum(v for k, v in deltas.items() if k.endswith("#usec")) / sockets, 1),
    }


async def main(args: argparse.Namespace) -> None:
    redis = RedisProc(Path(tempfile.mkdtemp(prefix="lobby-bench-ledger-")))
    node = LobbyNode(Settings(port=0, redis_url=redis.url, ping_interval_seconds=None,
                              max_sockets_per_ip=1_000_000, max_handshakes_per_ip=100_000,
                              max_handshakes=100_000))
    await node.start()
    ledger = node.gate.ledger
    results: dict[str, list[dict[str, Any]]] = {"ledger": [], "per_node_only": []}
    try:
        for _ in range(args.rounds):
            for name in results:
                node.gate.ledger = ledger if name == "ledger" else None
                results[name].append(await _phase(node, redis, args))
    finally:
        node.gate.ledger = ledger
        await node.stop()
        redis.stop()
    print("phase           connect p50 ms  p99 ms  burst/s  Redis µs/socket  Redis calls/socket")
    for name, phases in results.items():
        for r in phases:
            calls = " ".join(f"{k}={v:g}" for k, v in r["redis_calls_per_socket"].items()
                             if v >= 0.05)
            print(f"{name:<15} {r['connect_p50_ms']:>14.3f} {r['connect_p99_ms']:>7.2f} "
                  f"{r['burst_per_s']:>8} {r['redis_usec_per_socket']:>16.1f}  {calls}")
    print(json.dumps(results))


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sockets", type=int, default=1000)
    p.add_argument("--burst", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_args()))
