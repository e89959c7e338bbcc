"""`lobby serve --workers N`: N full lobby nodes on one port, one machine's cores used.

Python runs one event loop per process on one core; a lobby node in Redis mode
keeps no state of its own beyond its sockets, so N node processes sharing the
port (SO_REUSEPORT: the kernel spreads new connections over them) serve like N
nodes behind a load balancer. This parent process only supervises them:

- each worker is `lobby serve` with the same flags, `--reuse-port` and its own
  node id (`<node-id>-w<i>`, kept across restarts so a restarted worker drops its
  predecessor's sockets on its first sweep);
- start-up: when a worker cannot start (a bad flag, Redis unreachable), the others
  are stopped and the parent exits with that worker's exit code, the worker's own
  one-line error being the last thing printed;
- a worker that exits later (a crash, the OOM killer) is restarted: its players
  reconnect and resume (on any worker) and the other workers' players notice
  nothing. A worker that keeps exiting (CRASH_LIMIT times in CRASH_WINDOW_SECONDS)
  ends the whole server, exit code 1, so that a supervisor above this one
  (systemd, Kubernetes) sees the failure instead of an endless restart loop;
- SIGTERM or SIGINT: passed on to every worker, each of which drains as a single
  node does (clients told 1012, DynamoDB writes flushed); exit 0 once all are gone.

Embedded mode keeps its sessions in one process's memory: it stays one process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

log = logging.getLogger("lobby.workers")

READY_FD_ENV = "LOBBY_SUPERVISOR_READY_FD"
CRASH_LIMIT = 5
CRASH_WINDOW_SECONDS = 60.0
RESTART_DELAY_MAX = 5.0
# On top of --drain-seconds: what a worker gets to close its sockets and flush.
STOP_GRACE_SECONDS = 30.0


def cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_port(host: str, port: int) -> int:
    """The port every worker binds: `port`, after checking nobody holds it; a free
    one for port 0. Raises OSError (EADDRINUSE) like the node's own listen would."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    probes = []
    try:
        for family, type_, proto, _, addr in infos:
            s = socket.socket(family, type_, proto)
            probes.append(s)
            # As asyncio binds (SO_REUSEADDR) but without SO_REUSEPORT: refused
            # while anyone listens there, another `lobby serve --workers` included.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr[0], port, *addr[2:]))
            port = port or s.getsockname()[1]
        return port
    finally:
        for s in probes:
            s.close()


@dataclass
class Worker:
    index: int
    node_id: str
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None
    ready: bool = False
    exits: list[float] = field(default_factory=list)  # monotonic times of unasked exits
    restart_at: float | None = None


class Supervisor:
    def __init__(self, argv: list[str], workers: int, port: int, node_id: str,
                 drain_seconds: float) -> None:
        self.argv = argv
        self.port = port
        self.drain_seconds = drain_seconds
        self.workers = [Worker(i, f"{node_id}-w{i}") for i in range(1, workers + 1)]
        self.stopping = False

    def _spawn(self, w: Worker) -> None:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, READY_FD_ENV: str(write_fd)}
        # Later flags win in argparse: the same command with these overrides.
        cmd = [sys.executable, "-m", "lobby.cli", "serve", *self.argv, "--workers", "1",
               "--reuse-port", "--port", str(self.port), "--node-id", w.node_id]
        try:
            w.proc = subprocess.Popen(cmd, env=env, pass_fds=(write_fd,),
                                      stdin=subprocess.DEVNULL)
        finally:
            os.close(write_fd)
        w.ready_fd, w.ready, w.restart_at = read_fd, False, None

    def _close_ready(self, w: Worker) -> None:
        if w.ready_fd is not None:
            os.close(w.ready_fd)
            w.ready_fd = None

    def _signal_all(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    def _stop_all(self) -> int:
        """SIGTERM every worker, wait for them (then SIGKILL); the worst exit code."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.drain_seconds + STOP_GRACE_SECONDS
        worst = 0
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                code = w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %s (pid %d) did not stop; killing it", w.node_id, w.proc.pid)
                w.proc.kill()
                code = w.proc.wait()
            self._close_ready(w)
            # A worker stopped by our SIGTERM exits 0; a negative code is a signal.
            if code != 0:
                worst = worst or (code if code > 0 else 1)
        return worst

    def run(self) -> int:
        def on_signal(signum: int, frame: object) -> None:
            self.stopping = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        for w in self.workers:
            self._spawn(w)
        started = False
        while not self.stopping:
            fds = [w.ready_fd for w in self.workers if w.ready_fd is not None]
            with contextlib.suppress(InterruptedError):
                readable, _, _ = select.select(fds, [], [], 0.2)
                for w in self.workers:
                    if w.ready_fd in readable:
                        w.ready = os.read(w.ready_fd, 64).startswith(b"ready")
                        self._close_ready(w)
            if not started and all(w.ready for w in self.workers):
                started = True
                log.info("%d workers serving port %d: %s", len(self.workers), self.port,
                         ", ".join(f"{w.node_id} (pid {w.proc.pid})" for w in self.workers
                                   if w.proc is not None))
            code = self._check_exits(started)
            if code is not None:
                self._stop_all()
                return code
        log.info("stopping %d workers", len(self.workers))
        return self._stop_all()

    def _check_exits(self, started: bool) -> int | None:
        """Restart workers that exited; an exit code for the whole server when
        it must stop instead."""
        now = time.monotonic()
        for w in self.workers:
            if w.proc is None:
                if w.restart_at is not None and now >= w.restart_at:
                    self._spawn(w)
                continue
            code = w.proc.poll()
            if code is None:
                continue
            self._close_ready(w)
            w.proc = None
            if self.stopping:
                continue
            if not started:
                # Its own error line is on stderr already; the others stop with it.
                return code if code > 0 else 1
            w.exits = [t for t in w.exits if now - t < CRASH_WINDOW_SECONDS] + [now]
            how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
            if len(w.exits) >= CRASH_LIMIT:
                sys.stderr.write(
                    f"lobby serve: error: worker {w.node_id} exited {len(w.exits)} times in "
                    f"{CRASH_WINDOW_SECONDS:g}s (last: {how}); stopping every worker\n")
                return 1
            delay = min(RESTART_DELAY_MAX, 0.1 * 2 ** (len(w.exits) - 1))
            log.warning("worker %s exited (%s); restarting it in %.1fs", w.node_id, how,
                        delay)
            w.restart_at = now + delay
        return None


def notify_ready() -> None:
    """In a worker: tell the supervisor this node is listening (a no-op otherwise)."""
    raw = os.environ.pop(READY_FD_ENV, None)
    if not raw:
        return
    with contextlib.suppress(OSError, ValueError):
        fd = int(raw)
        os.write(fd, b"ready\n")
        os.close(fd)
