"""Running the Godot 3 edition's scripts in the real headless engine.

Godot exits 0 on a parse error and hangs on a runtime error
(/work/shared/godot-notes.md), so a script passes only with exit code 0 AND its
OK marker line; every script keeps its own deadline (`--deadline=`) and every
wait here has an outer timeout, after which the process is killed and its whole
output is shown.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent / "clients" / "godot3"
DEFAULT_WAIT = 20.0


def godot_binary() -> str:
    path = shutil.which("godot3-server")
    if path is None:
        pytest.fail("godot3-server is missing: ./scripts/test installs it "
                    "(apt-get install -y godot3-server)", pytrace=False)
    return path


def value(line: str, key: str) -> str:
    """`key=value` out of a marker line a Godot script printed."""
    for part in line.split():
        if part.startswith(key + "="):
            return part[len(key) + 1:]
    raise AssertionError(f"no {key}= in {line!r}")


def free_udp_port() -> int:
    """A UDP port nothing is bound to (for an ENet server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GodotProcess:
    """One headless Godot running a script of the Godot 3 project."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._eof = False
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            self._changed.set()
        self._eof = True
        self._changed.set()

    def output(self) -> str:
        return f"--- {self.name} output ---\n" + "\n".join(self.lines)

    def _failure(self) -> str | None:
        for line in self.lines:
            if line.startswith("FAIL ") or "SCRIPT ERROR" in line or "Parse Error" in line:
                return line
        return None

    async def expect(self, prefix: str, timeout: float = DEFAULT_WAIT) -> str:
        """The first output line starting with prefix, waiting for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for line in self.lines:
                if line.startswith(prefix):
                    return line
            failure = self._failure()
            if failure is not None or self._eof:
                pytest.fail(f"{self.name}: wanted {prefix!r}, got "
                            f"{failure or 'exit'}\n{self.output()}", pytrace=False)
            remaining = deadline - loop.time()
            if remaining <= 0:
                pytest.fail(f"{self.name}: no {prefix!r} within {timeout}s\n{self.output()}",
                            pytrace=False)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def passes(self, marker: str, timeout: float = DEFAULT_WAIT) -> None:
        """The script printed its OK marker and exited with code 0."""
        await self.expect(marker, timeout)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            pytest.fail(f"{self.name}: printed {marker} but did not exit\n{self.output()}",
                        pytrace=False)
        await self._reader
        assert code == 0, f"{self.name} exited with {code}\n{self.output()}"
        assert self._failure() is None, self.output()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()


class Godot:
    """Starts Godot scripts, each with its own user:// directory, and stops them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.binary = godot_binary()
        self.processes: list[GodotProcess] = []

    async def run(self, script: str, name: str, deadline: float = 45.0,
                  data_dir: str | None = None, **args: object) -> GodotProcess:
        env = dict(os.environ)
        env["LANG"] = "en_US.UTF-8"
        # user:// (the resume token file) lives under XDG_DATA_HOME: one per
        # player, unless a test restarts the same player on purpose.
        env["XDG_DATA_HOME"] = str(self.tmp / "userdata" / (data_dir or name))
        cmd = [self.binary, "-s", f"res://tests/{script}", "--path", str(PROJECT),
               f"--deadline={deadline}"]
        cmd += [f"--{key.replace('_', '-')}={value}" for key, value in args.items()]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
        process = GodotProcess(name, proc)
        self.processes.append(process)
        return process

    async def stop_all(self) -> None:
        for process in self.processes:
            await process.stop()


@asynccontextmanager
async def godot_runner(tmp: Path) -> AsyncIterator[Godot]:
    godot = Godot(tmp)
    try:
        yield godot
    finally:
        await godot.stop_all()


class TcpProxy:
    """A loopback TCP relay whose connections the test can cut, as a network
    drop would: the client sees its socket die without a close frame."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self._links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._links.append((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    def cut(self) -> int:
        """Abort every open link (RST both ways); returns how many were cut."""
        links, self._links = self._links, []
        for client_side, lobby_side in links:
            client_side.transport.abort()
            lobby_side.transport.abort()
        return len(links)

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
