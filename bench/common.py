"""What every scenario shares: the run's processes and clock (parent side), and
opening clients and rooms (driver side)."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.client import BenchClient, OnEvent, RequestFailed
from bench.driver import DriverPool, drivers_cpu
from bench.procs import (
    CLK_TCK,
    CPU_USEC,
    LobbyProc,
    Managed,
    ProcSample,
    RedisClusterProcs,
    RedisProc,
    combined,
    command_deltas,
    cpu_percent,
    machine_info,
    machine_ticks,
    open_fds,
    sample,
    sample_tree,
    sys_percent,
)
from bench.profiling import PySpy, stop_quietly
from bench.report import run_name, write_results

# Beyond this the run is no longer "modest"; on this machine it is also where
# the per-process open-file limit (20,000) stops a single node.
MAX_CLIENTS = 20_000


class DeadlineExceeded(RuntimeError):
    pass


def share(total: int, shard: int, shards: int) -> int:
    """This shard's part of `total` items, spread as evenly as possible."""
    return total // shards + (1 if shard < total % shards else 0)


def error_name(exc: BaseException) -> str:
    if isinstance(exc, RequestFailed):
        return exc.code
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__}[errno {exc.errno}]"
    return type(exc).__name__


# parent side -----------------------------------------------------------------
@dataclass
class Snapshot:
    nodes: dict[str, ProcSample | None]
    redis: ProcSample | None  # all redis-servers together
    redis_parts: list[ProcSample | None]  # each of them (a cluster's masters)
    drivers: list[ProcSample | None]
    commands: dict[str, int] = field(default_factory=dict)
    machine: tuple[float, int, int] = (0.0, 0, 0)


class Run:
    """One benchmark invocation: its processes, deadline, notes and results file."""

    def __init__(self, scenario: str, args: Any) -> None:
        self.scenario = scenario
        self.args = args
        self.mode: str = args.mode
        self.started = time.monotonic()
        self.deadline = self.started + args.deadline
        self.results_dir = Path(args.results_dir)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.name = run_name(scenario, self.mode)
        self.log_dir = self.results_dir / f"{self.name}.logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.redis: RedisProc | RedisClusterProcs | None = None
        self.nodes: list[LobbyProc] = []
        self.others: list[Managed] = []  # helpers such as fleetiq-local
        self.pool: DriverPool | None = None
        self.notes: list[str] = []
        self.steps: list[dict[str, Any]] = []
        self.profile: dict[str, Any] | None = None
        self.server_source: dict[str, Any] = {}
        self._profiler: PySpy | None = None

    # time ------------------------------------------------------------------
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def budget(self, wanted_s: float) -> float:
        left = self.left()
        if left <= 0:
            raise DeadlineExceeded(f"the run's --deadline of {self.args.deadline:.0f}s passed")
        return min(wanted_s, left)

    # processes ---------------------------------------------------------------
    def start_redis(self) -> RedisProc | RedisClusterProcs:
        """--mode redis: one redis-server; --mode cluster: a Redis Cluster of
        --masters masters (no replicas)."""
        if self.mode == "cluster":
            self.redis = RedisClusterProcs(self.log_dir, getattr(self.args, "masters", 3))
            self.notes.append(f"Redis Cluster of {len(self.redis.servers)} masters, "
                              f"{self.redis_buckets()} session buckets")
        else:
            self.redis = RedisProc(self.log_dir)
        for pid in self.redis.pids:
            self.pin(pid, node=False)
        return self.redis

    def redis_buckets(self) -> int | None:
        wanted = getattr(self.args, "redis_buckets", None)
        if wanted is None and self.mode == "cluster":
            return 4 * getattr(self.args, "masters", 3)
        return wanted  # type: ignore[no-any-return]

    @property
    def redis_servers(self) -> int:
        return len(self.redis.pids) if self.redis is not None else 0

    def start_node(self, name: str = "node1", extra: list[str] | None = None,
                   profiled: bool = False) -> LobbyProc:
        redis_args = self.redis.node_args(self.redis_buckets()) if self.redis else None
        profiler = None
        out = None
        if profiled and self.args.profile and self.args.profiler == "pyinstrument":
            profiler = "pyinstrument"
            out = self.results_dir / f"{self.name}-{name}.pyinstrument.txt"
            self.profile = {"profiler": "pyinstrument", "file": str(out),
                            "scope": "whole life of the node, set-up included"}
        node = LobbyProc(name, self.log_dir, redis_args=redis_args,
                         extra=[*(extra or []), *self.args.server_arg], profiler=profiler,
                         profile_out=out, workers=getattr(self.args, "workers", None))
        self.nodes.append(node)
        self.pin(node.pid, node=True)
        return node

    def pin(self, pid: int, *, node: bool) -> None:
        """--pin: the node alone on CPU 0 (its workers inherit it), everything else
        on the other CPUs, so the node never waits for a driver's time slice."""
        cpus = sorted(os.sched_getaffinity(0))
        if not getattr(self.args, "pin", False) or len(cpus) < 2:
            return
        os.sched_setaffinity(pid, {cpus[0]} if node else set(cpus[1:]))

    def stop_node(self, node: LobbyProc) -> None:
        node.stop()
        if node in self.nodes:
            self.nodes.remove(node)

    def start_drivers(self, main: Any, params: dict[str, Any]) -> DriverPool:
        self.pool = DriverPool(main, params, self.args.drivers,
                               hard_deadline_s=self.left() + 30)
        for pid in self.pool.pids:
            self.pin(pid, node=False)
        return self.pool

    def stop_drivers(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def close(self) -> None:
        stop_quietly(self._profiler)
        self.stop_drivers()
        for node in list(self.nodes):
            node.stop()
        self.nodes.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        for proc in self.others:
            proc.stop()
        self.others.clear()

    # profiling ----------------------------------------------------------------
    def start_profile(self, node: LobbyProc, label: str) -> None:
        if not self.args.profile or self.args.profiler != "py-spy":
            return
        ext = {"raw": "collapsed.txt", "flamegraph": "svg", "speedscope": "speedscope.json"}
        out = self.results_dir / f"{self.name}-{label}.{ext[self.args.profile_format]}"
        try:
            self._profiler = PySpy(node.pid, out, self.args.profile_format,
                                   subprocesses=bool(node.workers and node.workers > 1))
        except RuntimeError as exc:
            self.notes.append(f"profile not taken: {exc}")

    def stop_profile(self, label: str) -> None:
        if self._profiler is None:
            return
        result = stop_quietly(self._profiler)
        self._profiler = None
        if result is not None:
            result["step"] = label
            self.profile = result

    # measurement --------------------------------------------------------------
    def gather_measured(
        self, pool: DriverPool, phase: str, wait_s: float,
        profile: tuple[LobbyProc, str] | None = None,
    ) -> tuple[list[Any], dict[str, Any]]:
        """Collect the drivers' `phase` results, with every process's CPU over the
        wait (and a profile of `profile`'s node, labelled, when asked)."""
        if profile is not None:
            self.start_profile(*profile)
        before = self.snapshot()
        try:
            results = pool.gather(phase, wait_s)
        finally:
            after = self.snapshot()
            if profile is not None:
                self.stop_profile(profile[1])
        return results, self.usage(before, after)

    def snapshot(self) -> Snapshot:
        procs = [*self.nodes, *self.others]
        parts = [sample(pid) for pid in self.redis.pids] if self.redis is not None else []
        return Snapshot(
            # A --workers node is its parent and every worker: the tree's sum.
            nodes={p.name: sample_tree(p.pid) for p in procs},
            redis=combined(parts),
            redis_parts=parts,
            drivers=self.pool.samples() if self.pool is not None else [],
            commands=self.redis.command_stats() if self.redis is not None else {},
            machine=machine_ticks(),
        )

    def usage(self, before: Snapshot, after: Snapshot) -> dict[str, Any]:
        """CPU of every process between two snapshots (% of one core), RSS after."""
        out: dict[str, Any] = {"seconds": None}
        for name, a in after.nodes.items():
            b = before.nodes.get(name)
            out[f"{name}_cpu_pct"] = _r(cpu_percent(b, a))
            out[f"{name}_sys_pct"] = _r(sys_percent(b, a))
            out[f"{name}_rss_mib"] = round(a.rss_kib / 1024, 1) if a else None
            if b is not None and a is not None:
                out["seconds"] = round(a.t - b.t, 2)
        if after.redis is not None:
            out["redis_cpu_pct"] = _r(cpu_percent(before.redis, after.redis))
            out["redis_rss_mib"] = round(after.redis.rss_kib / 1024, 1)
            if CPU_USEC in after.commands and CPU_USEC in before.commands:
                # Redis' own count (µs), which a light step's few ms do not round to 0.
                out["redis_cpu_seconds"] = round(
                    (after.commands[CPU_USEC] - before.commands[CPU_USEC]) / 1e6, 6)
            elif out["redis_cpu_pct"] is not None and out["seconds"] is not None:
                out["redis_cpu_seconds"] = round(
                    (after.redis.cpu_ticks - before.redis.cpu_ticks) / CLK_TCK, 3)  # type: ignore[union-attr]
            if len(after.redis_parts) > 1:
                out["redis_cpu_pct_each"] = [
                    _r(cpu_percent(b, a)) for b, a in zip(before.redis_parts, after.redis_parts,
                                                          strict=True)]
        if after.drivers:
            cpus = drivers_cpu(before.drivers, after.drivers)
            out["driver_cpu_pct"] = [_r(c) for c in cpus]
            out["driver_cpu_pct_total"] = _r(sum(c for c in cpus if c is not None))
        # Whatever else ran on the machine meanwhile (other test suites, say)
        # competes for the same cores: the results say how much there was.
        t0, busy0, irq0 = before.machine
        t1, busy1, irq1 = after.machine
        # CLOCK_MONOTONIC bounds of the window, to line up with other logs.
        out["window_monotonic_s"] = [round(t0, 3), round(t1, 3)]
        if t1 > t0:
            scale = 100.0 / CLK_TCK / (t1 - t0)
            machine = (busy1 - busy0) * scale
            ours = sum(v for k, v in out.items()
                       if k.endswith(("_cpu_pct", "_cpu_pct_total")) and isinstance(v, float))
            out["machine_busy_pct"] = _r(machine)
            out["irq_softirq_pct"] = _r((irq1 - irq0) * scale)
            out["other_processes_cpu_pct"] = _r(max(0.0, machine - ours - (irq1 - irq0) * scale))
        out["redis_commands"] = command_deltas(before.commands, after.commands)
        return out

    def node_fds(self) -> dict[str, int | None]:
        return {n.name: open_fds(n.pid) for n in self.nodes}

    # results ------------------------------------------------------------------
    def finish(self, params: dict[str, Any], summary: list[dict[str, Any]],
               error: str | None = None) -> Path:
        doc = {
            "scenario": self.scenario,
            "mode": self.mode,
            "command": "python -m bench " + " ".join(sys.argv[1:]),
            "params": params,
            "machine": machine_info(),
            "drivers": self.args.drivers,
            "server_source": self.server_source,
            "wall_seconds": round(time.monotonic() - self.started, 1),
            "error": error,
            "notes": self.notes,
            "summary": summary,
            "steps": self.steps,
            "profile": self.profile,
            "logs": str(self.log_dir),
        }
        return write_results(self.results_dir, self.name, doc)


def _r(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


# driver side -------------------------------------------------------------------
class Opener:
    """Opens clients with a bounded number of handshakes in flight.

    The node's listen backlog is asyncio's default of 100: more simultaneous
    connects than that and the kernel drops SYNs, which the client only retries
    after a second, turning set-up time into a measure of TCP retransmits. The
    same bound covers set-up requests (create, join), so that set-up never has
    more commands in flight on a node than a measured phase would.
    """

    def __init__(self, url: str, concurrency: int, prefix: str) -> None:
        self.url = url
        self.sem = asyncio.Semaphore(concurrency)
        self._prefix = prefix
        self._n = 0
        self.clients: list[BenchClient] = []
        self.connect_ns: list[int] = []

    async def open(self, on_event: OnEvent | None = None) -> BenchClient:
        self._n += 1
        name = f"{self._prefix}{self._n}"
        async with self.sem:
            t0 = time.monotonic_ns()
            client = await BenchClient.open(self.url, name, on_event)
            self.connect_ns.append(time.monotonic_ns() - t0)
        self.clients.append(client)
        return client

    async def request(self, client: BenchClient, rtype: str, **fields: Any) -> dict[str, Any]:
        async with self.sem:
            return (await client.request(rtype, **fields))[1]

    def abort_all(self) -> None:
        for c in self.clients:
            c.abort()
        self.clients.clear()


# Room descriptions of the search benchmark (issue 14): 5 modes, 8 regions, 20 maps
# and a numeric skill, drawn at random for each room.
MODES = [f"mode{i}" for i in range(5)]
REGIONS = [f"region{i}" for i in range(8)]
MAPS = [f"map{i:02d}" for i in range(20)]


def room_attributes(rng: random.Random) -> dict[str, Any]:
    return {"mode": rng.choice(MODES), "region": rng.choice(REGIONS),
            "map": rng.choice(MAPS), "skill": rng.randint(0, 99)}


async def make_room(opener: Opener, size: int, max_players: int = 8,
                    attributes: dict[str, Any] | None = None
                    ) -> tuple[str, list[BenchClient]]:
    """A WAITING session with `size` members, host first."""
    host = await opener.open()
    fields: dict[str, Any] = {"attributes": attributes} if attributes else {}
    reply = await opener.request(host, "create_session", max_players=max_players, **fields)
    sid = reply["session"]["session_id"]

    async def member() -> BenchClient:
        client = await opener.open()
        await opener.request(client, "join_session", session_id=sid)
        return client

    others = await asyncio.gather(*(member() for _ in range(size - 1)))
    return sid, [host, *others]


async def sleep_until(t_ns: int) -> None:
    delay = (t_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


def next_slot(slot: int, period_ns: int, warm_ns: int) -> tuple[int, int]:
    """The slot after `slot` of an open-loop schedule (one every `period_ns`),
    and how many slots it came late for. Slots that passed while the previous
    cycle was still running are skipped, not queued, so that a slow server
    shows up as missed rate rather than hidden in the latency figures; they
    count as late only once past the warm-up (`warm_ns`)."""
    slot += period_ns
    now = time.monotonic_ns()
    if now <= slot:
        return slot, 0
    missed = (now - slot) // period_ns + 1
    return slot + missed * period_ns, missed if slot >= warm_ns else 0


def count_errors(results: Iterable[Any]) -> Counter[str]:
    errors: Counter[str] = Counter()
    for r in results:
        if isinstance(r, BaseException):
            errors[error_name(r)] += 1
    return errors
