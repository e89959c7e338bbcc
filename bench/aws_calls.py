"""CPU per GameLift call of the lobby's own AWS client (lobby/aws_json.py).

python -m bench.aws_calls [--src worktree|head|git:REV ...] [--rounds 2] [--calls 4000]

Each --src runs in a process of its own (alternated, --rounds times) against one
local fleetiq-local: CALLS UpdateGameServer calls with a start's GameServerData,
200 at a time on 16 kept-alive connections to 200 registered game servers, as a
start storm makes them. Prints that process's CPU time per call (the client's
Python and the kernel's send and receive of its side). Bounded; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import FleetIQProc, server_source

GROUP = "bench-aws-calls"
SERVERS = 200


async def _measure(endpoint: str, calls: int) -> float:
    from lobby.allocators.fleetiq import encode_game_server_data
    from lobby.aws import credentials, make_client
    from lobby.aws_json import AwsJsonClient

    client = AwsJsonClient(make_client("gamelift", endpoint_url=endpoint),
                           credentials(endpoint), max_connections=16)
    players = [f"p{i:022d}" for i in range(8)]

    async def one(i: int) -> None:
        await client.call("update_game_server", GameServerGroupName=GROUP,
                          GameServerId=f"bench-gs-{i % SERVERS}", UtilizationStatus="UTILIZED",
                          GameServerData=encode_game_server_data(f"s{i:020d}", players))

    async def batch(first: int, n: int) -> None:
        await asyncio.gather(*(one(first + i) for i in range(n)))

    await batch(0, 200)  # connections open, caches warm
    began = time.process_time()
    for first in range(0, calls, 200):
        await batch(first, min(200, calls - first))
    spent = time.process_time() - began
    await client.close()
    return spent / calls * 1e6


def _child(src: str, endpoint: str, calls: int) -> None:
    sys.path.insert(0, src)
    print(f"{asyncio.run(_measure(endpoint, calls)):.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", action="append", default=[],
                    help="lobby code to measure (repeatable; default: worktree)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--calls", type=int, default=4000)
    ap.add_argument("--child", nargs=2, metavar=("SRC_DIR", "ENDPOINT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.calls)
        return
    srcs = args.src or ["worktree"]
    scratch = Path(tempfile.mkdtemp(prefix="bench-aws-calls-"))
    dirs = {src: server_source(src, scratch / str(i))["path"] for i, src in enumerate(srcs)}
    fleet = FleetIQProc(scratch, GROUP, servers=SERVERS)
    try:
        for r in range(1, args.rounds + 1):
            for src in srcs:
                out = subprocess.run(
                    [sys.executable, "-m", "bench.aws_calls", "--calls", str(args.calls),
                     "--child", dirs[src], fleet.endpoint],
                    capture_output=True, text=True, timeout=120, check=True).stdout.strip()
                print(f"round {r}  {src:>16}  {out} us CPU per call")
    finally:
        fleet.stop()


if __name__ == "__main__":
    main()
