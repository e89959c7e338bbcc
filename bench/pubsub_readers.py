"""Sharded pub/sub on a real 3-master Redis Cluster: lobby's RedisBus (a reader
task per master) against redis-py's ClusterPubSub.get_sharded_message (one loop
polling the masters' connections in turn), and whether ClusterPubSub follows a
slot move on its own.

    python -m bench.pubsub_readers [--messages N]

Prints delivery latency (SPUBLISH sent -> handler called, publisher in the same
process) and this process' CPU while one message goes out every 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import resource
import time
from typing import Any

from redis.asyncio.cluster import RedisCluster

from lobby.bus import RedisBus
from lobby.store.keys import Keys
from tests.cluster_fixtures import RedisClusterProcs


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _one_session_per_master(client: RedisCluster, keys: Keys) -> list[str]:
    by_master: dict[str, str] = {}
    for k in range(keys.buckets):
        sid = next(f"s{i}" for i in range(10**6) if keys.bucket(f"s{i}") == k)
        by_master.setdefault(client.get_node_from_key(keys.channel(sid)).name, sid)
    return list(by_master.values())


async def latency(port: int, kind: str, messages: int, poll: float = 0.0) -> str:
    keys = Keys(buckets=16)
    sub = RedisCluster(host="127.0.0.1", port=port)
    pub = RedisCluster(host="127.0.0.1", port=port)
    await sub.initialize()
    await pub.initialize()
    sids = _one_session_per_master(sub, keys)
    got: asyncio.Queue[float] = asyncio.Queue()
    stop = False
    bus: RedisBus | None = None
    task: asyncio.Task[None] | None = None
    pubsub: Any = None
    if kind == "RedisBus":
        bus = RedisBus(sub, keys)
        await bus.start("bench", lambda raw: got.put_nowait(time.perf_counter()))
        for sid in sids:
            await bus.subscribe(sid)
    else:
        pubsub = sub.pubsub()
        for sid in sids:
            await pubsub.ssubscribe(keys.channel(sid))

        async def loop() -> None:
            while not stop:
                m = await pubsub.get_sharded_message(ignore_subscribe_messages=True,
                                                     timeout=poll)
                if m and m["type"] in ("smessage", b"smessage"):
                    got.put_nowait(time.perf_counter())
        task = asyncio.create_task(loop())
    lat: list[float] = []
    # Random masters: publishing in the poller's own round-robin order would
    # line the two up and hide its waits.
    rng = random.Random(1)
    cpu0, t0 = _cpu(), time.perf_counter()
    for _ in range(messages):
        sent = time.perf_counter()
        await pub.execute_command("SPUBLISH", keys.channel(rng.choice(sids)), "x")
        lat.append((await asyncio.wait_for(got.get(), 5) - sent) * 1000)
        await asyncio.sleep(0.01)
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    stop = True
    if bus is not None:
        await bus.close()
    if task is not None:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await pubsub.aclose()
    await sub.aclose()
    await pub.aclose()
    lat.sort()
    label = kind if kind == "RedisBus" else f"{kind}(timeout={poll})"
    return (f"{label:34} p50 {lat[len(lat) // 2]:6.2f} ms  p99 {lat[int(len(lat) * .99)]:7.2f} ms"
            f"  max {lat[-1]:7.2f} ms  CPU {cpu / wall * 100:3.0f}% of a core")


async def follows_move(cluster: RedisClusterProcs, port: int, shared: bool) -> str:
    keys = Keys(buckets=16)
    sub = RedisCluster(host="127.0.0.1", port=port)
    pub = sub if shared else RedisCluster(host="127.0.0.1", port=port)
    await sub.initialize()
    channel = keys.channel("room")
    pubsub = sub.pubsub()
    await pubsub.ssubscribe(channel)
    for _ in range(3):
        await pubsub.get_sharded_message(timeout=0.1)
    slot = sub.keyslot(channel)
    src = cluster.owner(slot).port
    cluster.move_slots([slot], next(m.port for m in cluster.masters() if m.port != src))
    arrived, t0 = False, time.monotonic()
    while not arrived and time.monotonic() - t0 < 5:
        await pub.execute_command("SPUBLISH", channel, "after")
        m = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=0.2)
        arrived = bool(m and m["type"] in ("smessage", b"smessage"))
    await pubsub.aclose()
    await sub.aclose()
    if not shared:
        await pub.aclose()
    who = "the subscriber's own" if shared else "another"
    return f"ClusterPubSub after a slot move, publisher on {who} cluster client: " + (
        "delivered" if arrived else "nothing within 5 s")


async def main(messages: int) -> None:
    cluster = RedisClusterProcs(3).start()
    try:
        port = cluster.ports[0]
        print(await latency(port, "RedisBus", messages))
        for poll in (0.0, 0.01, 0.1):
            print(await latency(port, "ClusterPubSub", messages, poll))
        print(await latency(port, "RedisBus", messages))
        print(await follows_move(cluster, port, shared=False))
        print(await follows_move(cluster, port, shared=True))
    finally:
        cluster.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    asyncio.run(main(parser.parse_args().messages))
