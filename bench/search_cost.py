"""search-cost: Redis-side µs of list.lua, this checkout's against another commit's.

python -m bench.search_cost [--rooms 10000] [--against REV ...] [--rounds 4]

A private redis-server gets the `list --search` population (rooms of one host with
random mode/region/map/skill, made through RedisStore). Then both versions of
list.lua (prelude.lua + list.lua of the worktree and of --against, if its ARGV is
the same) walk the same random searches, first pages and cursor pages apart, in
interleaved rounds; INFO commandstats (reset before each phase) gives the Redis
time per call, which other processes' load moves less than latencies. Also the
plain list (newest, no filter).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from redis import asyncio as aioredis

from bench.common import MODES, REGIONS, room_attributes
from bench.procs import RedisProc
from lobby.store.redis import RedisStore
from lobby.store.search import SCAN_BUDGET, SNAPSHOT_MAX, SNAPSHOT_MS

_LUA = Path(__file__).resolve().parent.parent / "lobby" / "store" / "lua"


def _lua_at(rev: str, name: str) -> str:
    return subprocess.run(["git", "show", f"{rev}:lobby/store/lua/{name}.lua"],
                          capture_output=True, text=True, check=True,
                          cwd=_LUA).stdout


def _arg(query: dict[str, Any], cursor: str | None) -> str:
    at: tuple[str, int] | None = None
    if cursor:
        if cursor.startswith("p"):
            token, _, off = cursor[1:].partition(".")
            at = ("snap:" + token, int(off))
        else:
            at = ("seq", int(cursor))
    return json.dumps({
        "sort": query["sort"], "limit": 20, "conds": query["conds"],
        "min_free": None, "has_pw": None, "indexed": "*",
        "token": secrets.token_hex(8), "budget": SCAN_BUDGET, "snap_max": SNAPSHOT_MAX,
        "snap_ms": SNAPSHOT_MS,
        "seq": at[1] if at and at[0] == "seq" else False,
        "snap": at[0].removeprefix("snap:") if at and at[0] != "seq" else False,
        "offset": at[1] if at else 0,
    })


async def _usec(r: aioredis.Redis) -> tuple[int, int]:
    stats = await r.info("commandstats")
    ev = stats.get("cmdstat_evalsha", {})
    return int(ev.get("calls", 0)), int(ev.get("usec", 0))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rooms", type=int, default=10_000)
    ap.add_argument("--against", action="append", default=None,
                    help="commit whose list.lua to compare (repeatable; default d702e3a, HEAD)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--walks", type=int, default=200, help="searches per round (5 pages)")
    args = ap.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="search-cost-"))
    redis_proc = RedisProc(log_dir)
    try:
        r = aioredis.Redis.from_url(redis_proc.url)
        store = RedisStore(r)
        rng = random.Random(1)
        now = int(time.time() * 1000)
        t0 = time.monotonic()
        for i in range(args.rooms):
            await store.new_player(f"h{i}", f"h{i}", "x", f"n1.{i}", now)
            await store.create_session(f"h{i}", f"s{i}", f"room {i}", 8, None, now,
                                       attributes=room_attributes(rng))
        print(f"{args.rooms} rooms in {time.monotonic() - t0:.1f}s")
        prelude_now = (_LUA / "prelude.lua").read_text()
        variants = {"worktree": prelude_now + "\n" + (_LUA / "list.lua").read_text()}
        for rev in args.against or ["d702e3a", "HEAD"]:
            try:
                variants[rev] = _lua_at(rev, "prelude") + "\n" + _lua_at(rev, "list")
            except subprocess.CalledProcessError as err:
                print(f"no list.lua at {rev}: {err}")
        scripts = {k: r.register_script(v) for k, v in variants.items()}
        queries = [{"sort": "most_players",
                    "conds": [["mode", "eq", rng.choice(MODES)],
                              ["region", "eq", rng.choice(REGIONS)]]}
                   for _ in range(args.walks)]
        plain = {"sort": "newest", "conds": []}
        totals: dict[tuple[str, str], list[float]] = {}

        async def phase(name: str, kind: str, calls: list[tuple[dict[str, Any], str | None]]
                        ) -> list[str | None]:
            script = scripts[name]
            await r.config_resetstat()
            nexts: list[str | None] = []
            for query, cursor in calls:
                res = await script(args=["lobby:", 0, _arg(query, cursor)])
                nexts.append(None if res[0] == b"ERR" else (res[0].decode() or None))
            n, usec = await _usec(r)
            totals.setdefault((name, kind), []).append(usec / max(1, n))
            return nexts

        for _ in range(args.rounds):
            for name in scripts:
                # The same walks for every variant: first pages, then pages 2-5.
                cursors: list[str | None] = await phase(
                    name, "first page", [(q, None) for q in queries])
                for depth in range(2, 6):
                    live = [(q, c) for q, c in zip(queries, cursors, strict=True) if c]
                    got = await phase(name, "later page", live)
                    it = iter(got)
                    cursors = [next(it) if c else None for c in cursors]
                    del depth
                pc: list[str | None] = await phase(name, "plain first", [(plain, None)] * 200)
                await phase(name, "plain later", [(plain, c) for c in pc if c])
        print(f"{'variant':<12} {'call':<12} µs per call (rounds)")
        for (name, kind), vals in totals.items():
            print(f"{name:<12} {kind:<12} {min(vals):7.1f} min "
                  f"{sorted(vals)[len(vals) // 2]:7.1f} median  {[round(v) for v in vals]}")
        await r.aclose()
    finally:
        redis_proc.stop()


if __name__ == "__main__":
    asyncio.run(main())
