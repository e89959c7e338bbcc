"""Proposed server changes, tried on a node without editing lobby/ (--server-patch).

Python imports `sitecustomize` at start-up from sys.path; the bench puts this
directory on the path of lobby nodes only, with BENCH_SERVER_PATCH naming the
patches to apply (comma-separated). Each patch mimics a change suggested in
docs/benchmarks.md, so its gain can be measured before anyone writes it.
"""

from __future__ import annotations

import gc
import os
from typing import Any

_patches = {p for p in os.environ.get("BENCH_SERVER_PATCH", "").split(",") if p}

if "pool" in _patches:
    # A blocking pool: a burst of requests waits for a free Redis connection
    # instead of failing with MaxConnectionsError (redis-py's default pool
    # holds 100 connections and raises on the 101st concurrent command).
    import redis.asyncio as aioredis

    def _from_url(url: str, **kwargs: Any) -> aioredis.Redis:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=10, **kwargs)
        return aioredis.Redis(connection_pool=pool)

    aioredis.from_url = _from_url  # type: ignore[assignment]

if "nogc" in _patches:
    # The upper bound of what GC tuning (gc.freeze, higher thresholds) can give.
    gc.disable()

if "gcfreeze" in _patches:
    # Fewer, cheaper collections: start-up objects leave the collector's sight
    # and the young generation is collected 70x less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)

if "backlog" in _patches:
    # serve(..., backlog=4096): asyncio's default listen backlog is 100, and a
    # full accept queue drops SYNs that the client only retries a second later.
    import asyncio.base_events
    import functools

    _create_server = asyncio.base_events.BaseEventLoop.create_server

    @functools.wraps(_create_server)
    async def _create_server_backlog(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("backlog", 4096)
        return await _create_server(self, *args, **kwargs)

    asyncio.base_events.BaseEventLoop.create_server = _create_server_backlog  # type: ignore[method-assign]

if "scriptcache" in _patches:
    # A pipeline of Script calls without redis-py's SCRIPT EXISTS round trip before
    # every execute: once a pipeline has checked (or loaded) its scripts, later
    # pipelines trust that. Measures what the store's leave would save; a real fix
    # must also reload on NOSCRIPT (a Redis restarted empty).
    from redis.asyncio.client import Pipeline

    _load_scripts = Pipeline.load_scripts
    _checked: set[str] = set()

    async def _load_scripts_once(self: Any) -> None:
        if all(s.sha in _checked for s in self.scripts):
            return
        await _load_scripts(self)
        _checked.update(s.sha for s in self.scripts)

    Pipeline.load_scripts = _load_scripts_once  # type: ignore[method-assign]

if "cprofile" in _patches:
    # Deterministic call counts (and cProfile's CPU time, inflated by its own
    # overhead) for the node's whole life, written at exit to
    # $BENCH_CPROFILE_OUT.<pid>: what a change removes per operation shows up
    # as calls, which do not vary from run to run as sampled times do.
    import atexit
    import cProfile
    import time

    _profiler = cProfile.Profile(time.process_time)
    _profiler.enable()

    def _dump() -> None:
        _profiler.disable()
        _profiler.dump_stats(f"{os.environ.get('BENCH_CPROFILE_OUT', '/tmp/node')}.{os.getpid()}")

    atexit.register(_dump)

if "uvloop" in _patches:
    # uvloop's event loop (libuv, transports in C) under the node instead of asyncio's.
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
