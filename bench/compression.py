"""RSS per idle client with and without permessage-deflate.

python -m bench.compression [--clients 2000]

Starts `lobby serve` (embedded) twice on 127.0.0.1, once with --ws-compression,
connects N clients that say hello and list sessions, and prints the node's RSS
growth per client. Bounded: N clients, one node at a time, then it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import sys

from websockets.asyncio.client import connect


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _wait_listening(port: int) -> None:
    async with asyncio.timeout(15):
        while True:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.05)


async def measure(clients: int, compression: bool) -> float:
    port = _free_port()
    args = [sys.executable, "-m", "lobby.cli", "serve", "--port", str(port),
            "--log-level", "ERROR", "--ping-interval-seconds", "0"]
    if compression:
        args.append("--ws-compression")
    node = await asyncio.create_subprocess_exec(*args)
    try:
        await _wait_listening(port)
        base = _rss_kib(node.pid)
        conns = []
        for i in range(clients):
            ws = await connect(f"ws://127.0.0.1:{port}/ws",
                               compression="deflate" if compression else None)
            await ws.send(json.dumps({"type": "hello", "id": 1, "name": f"p{i}"}))
            await ws.recv()
            await ws.send(json.dumps({"type": "list_sessions", "id": 2}))
            await ws.recv()
            conns.append(ws)
        per_client = (_rss_kib(node.pid) - base) / clients
        for ws in conns:
            await ws.close()
        return per_client
    finally:
        node.terminate()
        await asyncio.wait_for(node.wait(), 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for compression in (False, True):
        kib = asyncio.run(measure(args.clients, compression))
        print(f"compression={'on ' if compression else 'off'} clients={args.clients} "
              f"rss_per_client={kib:.1f} KiB")


if __name__ == "__main__":
    main()
