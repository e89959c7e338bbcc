"""Sampling the server during a measured phase, and reading the samples.

py-spy attaches to the running node only for the phase being measured, so
set-up (thousands of handshakes) does not drown the steady state. It samples
in its default blocking mode: `--nonblocking` would spare the node the pauses,
but its stacks then come out torn (frames of different moments stitched
together). Pausing the node 200 times a second costs it some latency, so
profiled steps are flagged in the results. It keeps only samples of a thread
holding the GIL (`--gil`): a node that writes to a socket wakes the reader,
which often preempts it on the same core, and without `--gil` py-spy counted
that wait (the thread is runnable, inside `send()`) as work: `send()` looked
like 30-45% of the node while the kernel was ~22% of its CPU (utime/stime,
`perf record -e cpu-clock`). When py-spy cannot attach (no
ptrace in some sandboxes), the node can instead be started under pyinstrument,
which profiles the whole life of the process.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

SAMPLE_RATE = 200  # per second: enough samples in a 10 s phase for a stable top 20


class PySpy:
    def __init__(self, pid: int, out: Path, fmt: str = "raw", subprocesses: bool = False) -> None:
        # The venv's own py-spy when the venv is not on PATH (`.venv/bin/python -m bench`).
        exe = shutil.which("py-spy") or shutil.which(
            "py-spy", path=str(Path(sys.executable).parent))
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.out = out
        self.fmt = fmt
        self.log = out.with_suffix(out.suffix + ".log")
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE),
             "--nolineno", "--gil", "--format", fmt, "-o", str(out),
             *(["--subprocesses"] if subprocesses else [])],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def stop(self) -> dict[str, Any]:
        # py-spy writes its output when interrupted, like ^C at a terminal.
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()
        result: dict[str, Any] = {"profiler": "py-spy", "file": str(self.out)}
        if not self.out.exists():
            result["error"] = self.log.read_text(errors="replace")[-2000:]
            return result
        if self.fmt == "raw":
            result.update(summarize_collapsed(self.out.read_text(errors="replace")))
        return result


# A sample whose innermost frame is the event loop's poll is the node waiting
# for work: py-spy cannot always tell that the thread is idle there.
IDLE_LEAVES = ("EpollSelector.select (selectors.py)", "select (selectors.py)")


def summarize_collapsed(text: str, top: int = 20) -> dict[str, Any]:
    """Top functions by self and inclusive samples, from py-spy's raw output.

    Percentages are of the event loop thread's busy samples (its idle waits in
    the poll left out), so they read as shares of the loop's CPU time.
    """
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    lobby_counts: Counter[str] = Counter()
    total = idle = threads = 0
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        # py-spy may put the process or thread as the first frame.
        frames = [f.strip() for f in stack.split(";")
                  if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if frames[-1] in IDLE_LEAVES:
            idle += count
            continue
        # Python 3.11+ names it Thread._bootstrap.
        if frames[0].startswith(("_bootstrap (threading.py)", "Thread._bootstrap (threading.py)")):
            # Pool threads (boto3 calls, scrypt) mostly wait on sockets, which
            # py-spy cannot tell from work here: counted apart from the loop.
            threads += count
            continue
        total += count
        self_counts[frames[-1]] += count
        for f in set(frames):
            incl_counts[f] += count
            if "(lobby/" in f:
                lobby_counts[f] += count

    def rows(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": f, "samples": n, "pct": round(100 * n / total, 1)}
                for f, n in counter.most_common(top)]

    return {
        "busy_samples": total,
        "idle_samples": idle,
        "pool_thread_samples": threads,
        "sample_rate": SAMPLE_RATE,
        "top_self": rows(self_counts) if total else [],
        "top_inclusive": rows(incl_counts) if total else [],
        "top_lobby_inclusive": rows(lobby_counts) if total else [],
    }


def stop_quietly(profiler: PySpy | None) -> dict[str, Any] | None:
    if profiler is None:
        return None
    with contextlib.suppress(Exception):
        return profiler.stop()
    return {"profiler": "py-spy", "error": "py-spy failed"}
