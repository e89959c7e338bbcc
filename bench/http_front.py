"""What the HTTP front (lobby/http.py) costs and saves, one sequential client at a time.

python -m bench.http_front [--requests 2000] [--connections 1000] [--sockets 500]

Starts an embedded node in this process on 127.0.0.1 and times: REQUESTS
GET /healthz through one http.client connection (kept alive by the front;
websockets' process_request closed it after every answer), CONNECTIONS
GET /healthz on a new connection each, and SOCKETS WebSocket connect + hello +
close (every handshake goes through the front). Bounded; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import time

from websockets.asyncio.client import connect

from lobby.app import LobbyNode
from lobby.config import Settings


def _kept_alive(port: int, n: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    began = time.perf_counter()
    for _ in range(n):
        conn.request("GET", "/healthz")
        conn.getresponse().read()
    conn.close()
    return time.perf_counter() - began


def _fresh(port: int, n: int) -> float:
    began = time.perf_counter()
    for _ in range(n):
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        conn.close()
    return time.perf_counter() - began


async def main(args: argparse.Namespace) -> None:
    node = LobbyNode(Settings(port=0, ping_interval_seconds=None))
    await node.start()
    try:
        port = node.port
        result = {
            "kept_alive_s": await asyncio.to_thread(_kept_alive, port, args.requests),
            "new_connection_s": await asyncio.to_thread(_fresh, port, args.connections),
        }
        began = time.perf_counter()
        for _ in range(args.sockets):
            async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as ws:
                await ws.send(json.dumps({"type": "hello", "id": 1, "name": "bench"}))
                await ws.recv()
        result["ws_connect_hello_s"] = time.perf_counter() - began
        print(json.dumps({k: round(v, 3) for k, v in result.items()}))
    finally:
        await node.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--sockets", type=int, default=500)
    asyncio.run(main(parser.parse_args()))
