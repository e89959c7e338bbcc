"""The processes a run starts and watches: redis-server, lobby nodes, fleetiq-local.

Everything listens on 127.0.0.1 on a port picked here; nothing ever talks to
the machine's own Redis on 6379. Resource figures come straight from /proc so
that the benchmark needs nothing beyond the project's own dependencies.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
_REPO_ROOT = Path(__file__).resolve().parent.parent


class StartError(RuntimeError):
    """A subprocess did not come up; the message carries its log tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def raise_nofile() -> int:
    """Lift this process's open-file soft limit to its hard limit; return the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def nofile_limits() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return int(soft), int(hard)


# /proc sampling ---------------------------------------------------------------
@dataclass(slots=True)
class ProcSample:
    t: float  # time.monotonic()
    rss_kib: int
    hwm_kib: int
    cpu_ticks: int  # utime + stime, in clock ticks
    threads: int
    sys_ticks: int = 0  # stime: the kernel's work for the process (syscalls, loopback TCP)


def sample(pid: int) -> ProcSample | None:
    """RSS, peak RSS and CPU ticks of one process, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    # comm (field 2) may contain spaces: split after its closing parenthesis.
    rest = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(rest[11]), int(rest[12])
    return ProcSample(
        t=time.monotonic(),
        rss_kib=int(fields.get("VmRSS", "0 kB").split()[0]),
        hwm_kib=int(fields.get("VmHWM", "0 kB").split()[0]),
        cpu_ticks=utime + stime,
        threads=int(fields.get("Threads", "1")),
        sys_ticks=stime,
    )


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(c) for c in
                        Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def sample_tree(pid: int) -> ProcSample | None:
    """sample() summed over a process and its descendants (a --workers node).

    CPU of workers that exited meanwhile is lost (a restart during a window)."""
    top = sample(pid)
    if top is None:
        return None
    for child in tree_pids(pid)[1:]:
        s = sample(child)
        if s is not None:
            top.rss_kib += s.rss_kib
            top.hwm_kib += s.hwm_kib
            top.cpu_ticks += s.cpu_ticks
            top.sys_ticks += s.sys_ticks
            top.threads += s.threads
    return top


def cpu_percent(before: ProcSample | None, after: ProcSample | None) -> float | None:
    """CPU use between two samples, in % of one core (200% = both cores busy)."""
    if before is None or after is None or after.t <= before.t:
        return None
    return 100.0 * (after.cpu_ticks - before.cpu_ticks) / CLK_TCK / (after.t - before.t)


def sys_percent(before: ProcSample | None, after: ProcSample | None) -> float | None:
    """The kernel's part of cpu_percent."""
    if before is None or after is None or after.t <= before.t:
        return None
    return 100.0 * (after.sys_ticks - before.sys_ticks) / CLK_TCK / (after.t - before.t)


def machine_ticks() -> tuple[float, int, int]:
    """(time, busy ticks, softirq+irq ticks) of all CPUs together, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    steal = fields[7] if len(fields) > 7 else 0
    return time.monotonic(), user + nice + system + irq + softirq + steal, irq + softirq


def listen_overflows() -> int | None:
    """TcpExt ListenOverflows: connections dropped because an accept queue was full."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table["ListenOverflows"]) if "ListenOverflows" in table else None
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        m = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        mem_kib = int(m.group(1)) if m else 0
    versions: dict[str, str] = {"python": platform.python_version()}
    for mod in ("websockets", "redis", "pydantic"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    redis_exe = shutil.which("redis-server")
    if redis_exe:
        with contextlib.suppress(Exception):
            out = subprocess.run([redis_exe, "--version"], capture_output=True, text=True,
                                 timeout=5).stdout
            m2 = re.search(r"v=(\S+)", out)
            versions["redis-server"] = m2.group(1) if m2 else out.strip()
    load = ""
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {
        "loadavg": load,
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "nofile_limits": list(nofile_limits()),
        "versions": versions,
    }


# subprocesses ---------------------------------------------------------------
def _child_setup() -> None:
    # Runs in the child between fork and exec: a node holding 20k sockets needs
    # the open-file limit lifted. (Its own process group keeps the terminal's ^C
    # out of it, so that the run's shutdown order stays ours.)
    raise_nofile()


# Where the lobby nodes import `lobby` from: this checkout unless a run asks for
# a snapshot of a commit (see server_source).
_server_src: Path = _REPO_ROOT


def server_source(which: str, scratch: Path) -> dict[str, Any]:
    """Point the nodes at `which` lobby code: "worktree", "head", "git:REV" or a directory.

    "head" and "git:REV" export that commit's lobby/ package (git archive) into
    `scratch`, so that a benchmark measures one commit even while the checkout
    is being edited and committed to.
    """
    global _server_src
    info: dict[str, Any] = {"source": which}
    with contextlib.suppress(Exception):
        info["commit"] = subprocess.run(
            ["git", "-C", str(_REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10).stdout.strip()
    if which == "worktree":
        _server_src = _REPO_ROOT
        with contextlib.suppress(Exception):
            dirty = subprocess.run(
                ["git", "-C", str(_REPO_ROOT), "status", "--porcelain", "--", "lobby"],
                capture_output=True, text=True, timeout=10).stdout.strip()
            info["uncommitted_lobby_changes"] = bool(dirty)
    elif which == "head" or which.startswith("git:"):
        rev = "HEAD" if which == "head" else which[4:]
        info["commit"] = subprocess.run(
            ["git", "-C", str(_REPO_ROOT), "rev-parse", "--short", rev],
            capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        scratch.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(_REPO_ROOT), "archive", rev, "lobby"],
                                 capture_output=True, check=True, timeout=60).stdout
        subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive, check=True,
                       timeout=60)
        _server_src = scratch
    else:
        _server_src = Path(which).resolve()
    info["path"] = str(_server_src)
    return info


_server_patches = ""
_PATCH_DIR = Path(__file__).resolve().parent / "patches"


def server_patches(names: str) -> None:
    """Apply bench/patches/sitecustomize.py's named patches to the nodes started later."""
    global _server_patches
    _server_patches = names


def _env(patched: bool = False, src: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # PYTHONPATH comes before the editable install's finder, so this chooses
    # which lobby code the subprocesses run.
    path = [str(src or _server_src), env.get("PYTHONPATH")]
    if patched and _server_patches:
        path.insert(0, str(_PATCH_DIR))
        env["BENCH_SERVER_PATCH"] = _server_patches
    env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Managed:
    """A subprocess with its output in a log file; stop() always reaps it."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path,
                 stdout: int | IO[str] | None = None, patched: bool = False,
                 env: dict[str, str] | None = None, src: Path | None = None) -> None:
        """`src`: the lobby code to run (default: the chosen server source)."""
        self.name = name
        self.cmd = cmd
        self.log_path = log_dir / f"{name}.log"
        n = 1
        while self.log_path.exists():  # a later step's node keeps the earlier log
            n += 1
            self.log_path = log_dir / f"{name}-{n}.log"
        self._log = self.log_path.open("w")
        self.proc: subprocess.Popen[str] = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else self._log, stderr=self._log,
            text=True, env={**_env(patched, src), **(env or {})}, preexec_fn=_child_setup,
            process_group=0,
            # `python -m` puts the working directory first on sys.path: run in
            # the chosen lobby source so that it, not the checkout, is imported.
            cwd=src or _server_src,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_grep(self, pattern: str) -> int:
        try:
            return len(re.findall(pattern, self.log_path.read_text(errors="replace")))
        except OSError:
            return 0

    def stop(self, sig: int = signal.SIGTERM, wait_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class RedisProc(Managed):
    def __init__(self, log_dir: Path, name: str = "redis", extra: list[str] | None = None,
                 port: int | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise StartError("redis-server is not on PATH")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="lobby-bench-redis-")
        super().__init__(name, [
            exe, "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
            "--appendonly", "no", "--dir", self.dir, "--maxclients", "10000", *(extra or []),
        ], log_dir)
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def pids(self) -> list[int]:
        return [self.pid]

    def node_args(self, buckets: int | None = None) -> list[str]:
        """`lobby serve` arguments that point a node here."""
        args = ["--redis-url", self.url]
        # Only when asked: a node of a commit before the bucket layout has no such flag.
        return args + (["--redis-buckets", str(buckets)] if buckets else [])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not self.alive():
                break
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise StartError(f"redis-server did not start:\n{self.log_tail()}")

    def command(self, *words: str) -> bytes:
        """One inline command on a fresh connection; the reply's raw bytes (a bulk
        string's body). Raw sockets: the bench needs no Redis client of its own."""
        with socket.create_connection((LOOPBACK, self.port), timeout=5) as s:
            s.sendall(" ".join(words).encode() + b"\r\n")
            buf = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                header, _, body = buf.partition(b"\r\n")
                if header.startswith(b"$") and len(body) >= int(header[1:]):
                    return body[:int(header[1:])]
                if header[:1] in (b"+", b"-", b":"):
                    return header
        return buf

    def command_stats(self) -> dict[str, int]:
        """Calls per command since start (INFO commandstats), the read events
        Redis served (INFO stats total_reads_processed: one per request or pipeline
        a client sent, i.e. its round trips) and the server's CPU time in µs (INFO
        cpu, `CPU_USEC`: exact, where /proc counts 10 ms ticks, which a short
        light step can miss entirely), in one INFO call."""
        buf = self.command("INFO", "commandstats", "stats", "cpu")
        stats: dict[str, int] = {}
        for m in re.finditer(rb"cmdstat_([^:]+):calls=(\d+),usec=(\d+)", buf):
            stats[m.group(1).decode()] = int(m.group(2))
            # Time Redis spent in the command (a script: all of it), in µs.
            stats[m.group(1).decode() + "#usec"] = int(m.group(3))
        for name in ("total_reads_processed", "total_writes_processed"):
            m2 = re.search(rb"\r\n" + name.encode() + rb":(\d+)", buf)
            if m2:
                stats["net#" + name.split("_")[1]] = int(m2.group(1))
        cpu = [re.search(rb"\r\n" + name + rb":([0-9.]+)\r\n", buf)
               for name in (b"used_cpu_sys", b"used_cpu_user")]
        if all(cpu):
            stats[CPU_USEC] = round(sum(float(m3.group(1)) for m3 in cpu if m3) * 1e6)
        return stats

    def stop(self, sig: int = signal.SIGTERM, wait_s: float = 10.0) -> None:
        super().stop(sig, wait_s)
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterProcs:
    """A Redis Cluster of `masters` masters, no replicas, on free ports.

    Each server's cluster bus port is a second free port: the default (port +
    10000) is past 65535 for many ports the OS hands out. The figures of a run
    are the sums over the masters (commands, reads, CPU).
    """

    def __init__(self, log_dir: Path, masters: int = 3) -> None:
        self.servers: list[RedisProc] = []
        try:
            for i in range(masters):
                port = free_port()
                self.servers.append(RedisProc(log_dir, name=f"redis-m{i + 1}", port=port, extra=[
                    "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                    "--cluster-config-file", f"nodes-{port}.conf",
                    # Long enough that a loaded machine never marks a busy master FAIL.
                    "--cluster-node-timeout", "15000",
                ]))
            cli = shutil.which("redis-cli")
            if cli is None:
                raise StartError("redis-cli is not on PATH")
            out = subprocess.run(
                [cli, "--cluster", "create", *(f"{LOOPBACK}:{s.port}" for s in self.servers),
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                raise StartError(f"redis-cli --cluster create failed:\n{out.stdout[-2000:]}"
                                 f"{out.stderr[-2000:]}")
            self._wait_ok()
        except BaseException:
            self.stop()
            raise

    def _wait_ok(self, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        want = f"cluster_known_nodes:{len(self.servers)}".encode()
        while time.monotonic() < deadline:
            infos = []
            with contextlib.suppress(OSError, ValueError):
                infos = [s.command("CLUSTER", "INFO") for s in self.servers]
            if infos and all(b"cluster_state:ok" in i and want in i
                             and b"cluster_slots_assigned:16384" in i for i in infos):
                return
            time.sleep(0.05)
        raise StartError("the cluster did not reach cluster_state:ok on every master")

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{LOOPBACK}:{s.port}" for s in self.servers)

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.servers]

    def node_args(self, buckets: int | None = None) -> list[str]:
        return ["--redis-cluster-url", self.url, "--redis-buckets", str(buckets or 12)]

    def command_stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for s in self.servers:
            for k, v in s.command_stats().items():
                total[k] = total.get(k, 0) + v
        return total

    def slots(self) -> dict[str, int]:
        """Keys held per master (DBSIZE), to see how evenly the buckets spread."""
        out = {}
        for s in self.servers:
            with contextlib.suppress(OSError, ValueError):
                out[s.name] = int(s.command("DBSIZE").lstrip(b":"))
        return out

    def stop(self, sig: int = signal.SIGTERM, wait_s: float = 10.0) -> None:
        for s in self.servers:
            s.stop(sig, wait_s)


def combined(samples: list[ProcSample | None]) -> ProcSample | None:
    """Several processes as one: their CPU ticks and RSS summed (None if any is gone)."""
    if not samples or any(s is None for s in samples):
        return None
    live = [s for s in samples if s is not None]
    return ProcSample(t=max(s.t for s in live), rss_kib=sum(s.rss_kib for s in live),
                      hwm_kib=sum(s.hwm_kib for s in live),
                      cpu_ticks=sum(s.cpu_ticks for s in live),
                      threads=sum(s.threads for s in live),
                      sys_ticks=sum(s.sys_ticks for s in live))


# Commands a lobby node sends itself; everything else in commandstats during a
# measured phase (GET, SET, PUBLISH, ZADD, ...) is issued by its Lua scripts, so
# costs Redis CPU but no round trip of its own. (A node also sends GET in resume
# and SET in hello, neither of which runs in a measured churn, list or storm
# phase.) Several of them may travel in one pipeline: the round trips are the
# read events Redis served (net#reads), not these.
NODE_COMMANDS = ("evalsha", "eval", "subscribe", "unsubscribe", "ssubscribe", "sunsubscribe",
                 "ping", "script|load", "script|exists", "cluster|slots", "cluster|shards",
                 "cluster|nodes")
# Read events one command_stats() call adds on each server: its own INFO, and
# the read that sees its connection close.
INFO_READS = 2


# The key of command_stats() that is the server's CPU time, not a command.
CPU_USEC = "cpu#usec"


def command_deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    # The benchmark's own INFO calls are not the server's work.
    out.pop("info", None)
    out.pop("info#usec", None)
    out.pop("cluster|info", None)
    out.pop("cluster|info#usec", None)
    out.pop(CPU_USEC, None)  # CPU time, not a command: Run.usage reads it
    return {k: v for k, v in sorted(out.items()) if v}


def redis_per_op(deltas: dict[str, int], ops: int, servers: int = 1,
                 cpu_seconds: float | None = None) -> dict[str, Any]:
    """Redis work per operation. `servers`: how many redis-servers the deltas sum
    over (each INFO pair adds its own reads); `cpu_seconds`: their process CPU
    over the same window, from /proc."""
    if ops <= 0:
        return {"ops": 0}
    node_cmds = sum(v for k, v in deltas.items() if k in NODE_COMMANDS)
    calls = {k: v for k, v in deltas.items() if "#" not in k}
    out: dict[str, Any] = {
        "ops": ops,
        "node_commands_per_op": round(node_cmds / ops, 3),
        "commands_per_op": {k: round(v / ops, 3) for k, v in calls.items()},
        # Time Redis spent executing what the nodes sent (a script's time holds
        # the commands it called, which commandstats also lists on their own).
        "command_usec_per_op": round(sum(deltas.get(k + "#usec", 0) for k in NODE_COMMANDS)
                                     / ops, 1),
    }
    if "net#reads" in deltas:
        reads = max(0, deltas["net#reads"] - INFO_READS * servers)
        out["round_trips_per_op"] = round(reads / ops, 3)
    else:  # a Redis without the stat: one command, one round trip
        out["round_trips_per_op"] = out["node_commands_per_op"]
    if cpu_seconds is not None:
        # All of a redis-server's CPU (network, event loop, commands) per op.
        out["cpu_usec_per_op"] = round(cpu_seconds * 1e6 / ops, 1)
    if deltas.get("evalsha"):
        # Redis-side time of a script call, which the machine's other load barely moves.
        out["evalsha_usec_per_call"] = round(deltas.get("evalsha#usec", 0) / deltas["evalsha"], 1)
    return out


class LobbyProc(Managed):
    """One `lobby serve` node, opened up for load: no rate limit, no keepalive pings."""

    def __init__(self, name: str, log_dir: Path, *, redis_args: list[str] | None = None,
                 redis_url: str | None = None, extra: list[str] | None = None,
                 profiler: str | None = None, profile_out: Path | None = None,
                 workers: int | None = None) -> None:
        if redis_url:  # one Redis (tests/faults.py); redis_args says anything else
            redis_args = [*(redis_args or []), "--redis-url", redis_url]
        self.port = free_port()
        self.workers = workers
        args = [
            "serve", "--host", LOOPBACK, "--port", str(self.port),
            # The bench measures the server, not its per-connection abuse limit.
            "--rate-limit-per-second", "1000000", "--rate-limit-burst", "1000000",
            # Its thousands of clients all come from 127.0.0.1, in bursts (limits
            # that older commits, --server-src git:REV, do not have are left out).
            *_known_options(["--max-sockets-per-ip", "1000000", "--max-handshakes", "100000",
                             "--max-handshakes-per-ip", "100000"]),
            # Idle clients would otherwise each cost a ping every 20 s; the
            # drivers do not answer slowly, but pings add noise to the figures.
            "--ping-interval-seconds", "0",
            "--log-level", "WARNING",
        ]
        args += redis_args or []
        if workers is not None:
            args += ["--workers", str(workers)]
        args += extra or []
        if profiler == "pyinstrument":
            assert profile_out is not None
            cmd = [sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(profile_out),
                   "-m", "lobby.cli", *args]
        else:
            cmd = [sys.executable, "-m", "lobby.cli", *args]
        self.profiler = profiler
        super().__init__(name, cmd, log_dir, patched=True,
                         # One process unless asked: lobby's default in Redis mode is one
                         # worker per core (older lobby code ignores the variable).
                         env={} if workers is not None else {"LOBBY_WORKERS": "1"})
        self._wait_ready()
        if workers is not None and workers > 1:
            self._wait_workers(workers)

    @property
    def url(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}/ws"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not self.alive():
                break
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/healthz",
                                            timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        raise StartError(f"{self.name} did not start:\n{self.log_tail()}")

    def _wait_workers(self, workers: int) -> None:
        """Until `workers` node ids have answered on the port (each new connection
        lands on one worker, chosen by the kernel)."""
        seen: set[str] = set()
        deadline = time.monotonic() + 20
        while len(seen) < workers and time.monotonic() < deadline:
            with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
                with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/metrics.json",
                                            timeout=1) as resp:
                    seen.add(json.loads(resp.read())["node_id"])
        if len(seen) < workers:
            self.stop()
            raise StartError(f"{self.name}: only {len(seen)} of {workers} workers answered:\n"
                             f"{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, wait_s: float = 10.0) -> None:
        # pyinstrument writes its report on SIGINT (KeyboardInterrupt), not SIGTERM.
        super().stop(signal.SIGINT if self.profiler == "pyinstrument" else sig, wait_s)


_serve_help: dict[Path, str] = {}


def serve_help() -> str:
    if _server_src not in _serve_help:
        out = subprocess.run([sys.executable, "-m", "lobby.cli", "serve", "--help"],
                             capture_output=True, text=True, env=_env(), cwd=_server_src,
                             timeout=30)
        _serve_help[_server_src] = out.stdout
    return _serve_help[_server_src]


def _known_options(pairs: list[str]) -> list[str]:
    """The (option, value) pairs that the nodes' `lobby serve` accepts."""
    known = serve_help()
    out: list[str] = []
    for opt, value in zip(pairs[::2], pairs[1::2], strict=True):
        if re.search(rf"{re.escape(opt)}(?![\w-])", known):
            out += [opt, value]
    return out


class FleetIQProc(Managed):
    """`lobby fleetiq-local` with one group holding `servers` registered game servers.

    It is part of the rig, not of the server under test: it runs this checkout's
    code whatever --server-src says, so an A/B of two lobby commits measures both
    against the same stand-in (whose own CPU shares the machine's cores)."""

    READY = "FLEETIQ_LOCAL_LISTENING port="

    def __init__(self, log_dir: Path, group: str, servers: int,
                 claim_limit: tuple[float, int] | None = None) -> None:
        self.group = group
        limit = (["--claim-rate-per-second", str(claim_limit[0]),
                  "--claim-burst", str(claim_limit[1])] if claim_limit else [])
        super().__init__("fleetiq", [
            sys.executable, "-m", "lobby.cli", "fleetiq-local", "--port", "0", "--group", group,
            "--log-level", "WARNING", *limit,
        ], log_dir, stdout=subprocess.PIPE, src=_REPO_ROOT)
        self.port = self._read_port()
        self.endpoint = f"http://{LOOPBACK}:{self.port}"
        self._register(servers)

    def _read_port(self) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith(self.READY):
                return int(line.strip().rsplit("=", 1)[1])
        self.stop()
        raise StartError(f"fleetiq-local did not start:\n{self.log_tail()}")

    def _register(self, servers: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from lobby.aws import make_client

        client = make_client("gamelift", endpoint_url=self.endpoint)

        def one(i: int) -> None:
            client.register_game_server(
                GameServerGroupName=self.group, GameServerId=f"bench-gs-{i}",
                InstanceId=f"i-{i:017d}", ConnectionInfo=f"{LOOPBACK}:{7000 + i % 1000}",
            )

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(servers)))
