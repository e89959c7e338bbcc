"""`lobby serve` as a real subprocess: started on a free port, its stderr kept line by line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from tests.conftest import free_port


class NodeProcess:
    """One `lobby serve` process; `lines` collects its stderr as it is read."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.args = ["serve", "--port", str(self.port), *args]
        self.env = {**os.environ, **(env or {})}
        for key in [k for k in self.env if k.startswith("LOBBY_") and k not in (env or {})]:
            del self.env[key]  # the machine's LOBBY_* must not leak into a test
        # One process, as the tests were written for; tests/test_workers.py asks for more.
        self.env.setdefault("LOBBY_WORKERS", "1")
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._seen = asyncio.Condition()
        self._signalled = False

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self, ready: str = "listening on", seconds: float = 20) -> NodeProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lobby.cli", *self.args, env=self.env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())
        await self.wait_for(ready, seconds)
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            async with self._seen:
                if not line:
                    self.lines.append("")  # EOF marker
                    self._seen.notify_all()
                    return
                self.lines.append(line.decode().rstrip("\n"))
                self._seen.notify_all()

    async def wait_for(self, needle: str, seconds: float = 20) -> str:
        """The first stderr line containing `needle` (waits for it)."""
        async with asyncio.timeout(seconds), self._seen:
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                if self.lines and self.lines[-1] == "":
                    raise AssertionError(
                        f"lobby exited without logging {needle!r}:\n" + "\n".join(self.lines))
                await self._seen.wait()

    async def wait_count(self, needle: str, count: int, seconds: float = 20) -> None:
        """Until `count` stderr lines contain `needle`."""
        async with asyncio.timeout(seconds), self._seen:
            while sum(needle in line for line in self.lines) < count:
                if self.lines and self.lines[-1] == "":
                    raise AssertionError(f"lobby exited with fewer than {count} lines "
                                         f"{needle!r}:\n" + "\n".join(self.lines))
                await self._seen.wait()

    def signal_stop(self) -> None:
        """SIGTERM, once: a node drains and exits by itself."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self._signalled = True

    async def terminate(self, seconds: float = 30) -> int:
        """SIGTERM (unless signal_stop() sent it) and the exit code."""
        assert self.proc is not None
        if not self._signalled:
            self.signal_stop()
        code = await asyncio.wait_for(self.proc.wait(), seconds)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        return code

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def run_lobby(args: list[str], env: dict[str, str] | None = None,
                    seconds: float = 30) -> tuple[int, list[str]]:
    """Run `lobby ARGS` to its end: (exit code, stderr lines)."""
    full_env: dict[str, Any] = {k: v for k, v in os.environ.items() if not k.startswith("LOBBY_")}
    full_env["LOBBY_WORKERS"] = "1"  # unless `args` or `env` ask for workers
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lobby.cli", *args, env=full_env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), seconds)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode().splitlines()
