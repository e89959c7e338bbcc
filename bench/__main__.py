"""python -m bench <scenario> [options]: run one load scenario against local lobby nodes.

Scenarios: fill, churn, cold, list, storm, cross-node, chat. Each run starts its own lobby
node(s) (and, with --mode redis or cluster, its own redis-server(s)), drives them from
--drivers processes over 127.0.0.1, prints a table and writes
bench/results/<scenario>-<mode>-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import Any

from bench import chat, churn, cold, fill, listing, storm
from bench.common import DeadlineExceeded, Run
from bench.driver import DriverError
from bench.procs import StartError, raise_nofile, server_patches, server_source
from bench.report import RESULTS_DIR, table


def _ints(raw: str) -> list[int]:
    return [int(x) for x in raw.replace("_", "").split(",") if x]


def _common(p: argparse.ArgumentParser, mode: bool = True) -> None:
    if mode:
        p.add_argument("--mode", choices=("embedded", "redis", "cluster"), default="embedded",
                       help="embedded: state in the node's memory; redis: a private "
                            "redis-server started for the run; cluster: a private Redis "
                            "Cluster (--masters masters, no replicas)")
    else:
        p.add_argument("--mode", choices=("redis", "cluster"), default="redis",
                       help="redis: one private redis-server; cluster: a private Redis Cluster")
    p.add_argument("--masters", type=int, default=3, help="--mode cluster: masters")
    p.add_argument("--redis-buckets", type=int, default=None, metavar="B",
                   help="the nodes' --redis-buckets (default: theirs on one Redis, "
                        "4 per master on a cluster)")
    p.add_argument("--drivers", type=int, default=2,
                   help="load-generating processes (default 2: this machine has 2 cores)")
    p.add_argument("--deadline", type=float, default=180.0,
                   help="hard limit on the whole run, in seconds")
    p.add_argument("--connect-concurrency", type=int, default=32,
                   help="handshakes in flight per driver")
    p.add_argument("--profile", action="store_true",
                   help="profile the node during the last measured step")
    p.add_argument("--profiler", choices=("py-spy", "pyinstrument"), default="py-spy")
    p.add_argument("--profile-format", choices=("raw", "flamegraph", "speedscope"),
                   default="raw", help="py-spy output; raw is summarised into the results")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `lobby serve` (repeatable; use --server-arg=--x)")
    p.add_argument("--results-dir", default=str(RESULTS_DIR))
    p.add_argument("--server-src", default="worktree", metavar="worktree|head|git:REV|DIR",
                   help="lobby code the nodes run: this checkout as it is (default), a "
                        "commit (exported to the run's log dir), or a directory")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="start each node as `lobby serve --workers N` (N processes on one "
                        "port); unset: one process (LOBBY_WORKERS=1, which older lobby "
                        "code ignores)")
    p.add_argument("--pin", action="store_true",
                   help="CPU affinity: the node on CPU 0, Redis and the drivers on the "
                        "others (what separate machines would give; 2 cores here)")
    p.add_argument("--server-patch", default="", metavar="NAMES",
                   help="try proposed server changes from bench/patches/sitecustomize.py on "
                        "the nodes, comma-separated: pool, backlog, gcfreeze, nogc, scriptcache, "
                        "cprofile")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="scenario", required=True)

    p = sub.add_parser("fill", help="rooms of 8: how many idle clients one node holds, RSS each")
    _common(p)
    p.add_argument("--clients", type=_ints, default=[2000, 5000, 10000, 20000],
                   help="client counts to try in turn, each on a fresh node (comma list)")
    p.add_argument("--hold", type=float, default=3.0,
                   help="seconds to hold the clients before checking every one answers")

    for name in ("churn", "cross-node"):
        p = sub.add_parser(name, help=(
            "an 8th player joins and leaves rooms of 7 at a fixed rate" if name == "churn" else
            "churn with the 7 members on node 1 and the joiner on node 2 (Redis)"))
        _common(p, mode=name == "churn")
        p.add_argument("--rooms", type=int, default=250)
        p.add_argument("--rate", type=_ints, default=[200, 500, 1000, 2000],
                       help="joins per second (each followed by a leave), in turn")
        p.add_argument("--duration", type=float, default=10.0, help="measured seconds per rate")
        p.add_argument("--warmup", type=float, default=2.0,
                       help="seconds at each rate before measuring")
        p.add_argument("--attributes", action="store_true",
                       help="rooms carry mode/region/map/skill attributes (indexed)")
        p.add_argument("--replies-only", action="store_true",
                       help="a cycle waits for the join/leave replies only, not for the "
                            "members' events: the store's cost without the fan-out")

    p = sub.add_parser("cold", help="connect + hello + join a room of 7 + leave + close, "
                                    "at a fixed rate (cold joins)")
    _common(p)
    p.add_argument("--rooms", type=int, default=250)
    p.add_argument("--rate", type=_ints, default=[200, 500, 1000, 1500],
                   help="cold joins per second, in turn")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per rate")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds at each rate before measuring")

    p = sub.add_parser("list", help="list_sessions pages at a fixed rate over many rooms")
    _common(p)
    p.add_argument("--rooms", type=_ints, default=[1000, 10000],
                   help="WAITING rooms (one host each), grown in turn")
    p.add_argument("--rate", type=float, default=500.0, help="list requests per second")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--page", type=int, default=50, help="limit of each list_sessions")
    p.add_argument("--listers", type=int, default=20, help="listing clients")
    p.add_argument("--max-pages", type=int, default=5,
                   help="pages a lister walks with the cursor before starting over")
    p.add_argument("--search", action="store_true",
                   help="rooms with random mode/region/map/skill attributes; each lister's "
                        "walk filters on a random mode and region, sorted by most_players")

    p = sub.add_parser("storm", help="full rooms whose hosts all start within a second")
    _common(p)
    p.add_argument("--rooms", type=int, default=500)
    p.add_argument("--spread", type=float, default=1.0,
                   help="the hosts' start_session sends are spread over this many seconds")
    p.add_argument("--wait", type=float, default=30.0,
                   help="a room without every session_started after this is stuck")
    p.add_argument("--allocator", choices=("auto", "static", "fleetiq"), default="auto",
                   help="auto: FleetIQ via fleetiq-local when `lobby serve` has "
                        "--fleetiq-group, else the static allocator")
    p.add_argument("--claim-limit", default=None, metavar="RATE,BURST",
                   help="fleetiq-local throttles ClaimGameServer past RATE a second in "
                        "bursts of BURST, as GameLift does (its default: 20,40 per "
                        "account); unset: no limit")
    p = sub.add_parser("chat", help="rooms of 8 chatting: send -> all 8 received latency")
    _common(p)
    p.add_argument("--rooms", type=int, default=250)
    p.add_argument("--rate", type=lambda raw: [float(x) for x in raw.split(",") if x],
                   default=[2.0], help="messages per second per room, in turn (comma list)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per rate")
    p.add_argument("--warmup", type=float, default=2.0)
    return parser


RUNNERS: dict[str, Callable[[Run], list[dict[str, Any]]]] = {
    "fill": fill.run,
    "churn": lambda r: churn.run(r, cross_node=False),
    "cross-node": lambda r: churn.run(r, cross_node=True),
    "cold": cold.run,
    "list": listing.run,
    "storm": storm.run,
    "chat": chat.run,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.drivers < 1:
        raise SystemExit("--drivers must be at least 1")
    raise_nofile()
    run = Run(args.scenario, args)
    run.server_source = server_source(args.server_src, run.log_dir / "server-src")
    if args.server_patch:
        server_patches(args.server_patch)
        run.server_source["patches"] = args.server_patch
        run.notes.append(f"nodes patched with bench/patches: {args.server_patch}")
    params = {k: v for k, v in vars(args).items() if k != "results_dir"}
    summary: list[dict[str, Any]] = []
    error = None
    try:
        summary = RUNNERS[args.scenario](run)
    except (DeadlineExceeded, DriverError, StartError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    except KeyboardInterrupt:
        error = "interrupted"
    except Exception:
        error = traceback.format_exc()
    finally:
        run.close()
    if not summary and run.steps:
        summary = [{"step": i} for i, _ in enumerate(run.steps)]
    print(f"\n{args.scenario} ({run.mode} mode, {args.drivers} driver processes)")
    print(table(summary))
    for note in run.notes:
        print(f"note: {note}")
    if run.profile and run.profile.get("top_self"):
        print("\nprofile of node1 (py-spy, busy samples only), top self time:")
        print(table(run.profile["top_self"][:12]))
    path = run.finish(params, summary, error)
    if error:
        print(f"error: {error}", file=sys.stderr)
    print(f"results: {path}")
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
