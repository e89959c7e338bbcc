"""`lobby` command line: serve, fleetiq-local, init-table.

Every flag of `serve` can also be set with a LOBBY_* environment variable
(flag name upper-cased, dashes to underscores: --redis-url -> LOBBY_REDIS_URL);
a flag given on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from lobby.config import Settings

DEFAULTS = Settings()


def _env(flag: str) -> str:
    return "LOBBY_" + flag.lstrip("-").upper().replace("-", "_")


def _add(parser: argparse.ArgumentParser, flag: str, type_: Callable[[str], Any], default: Any,
         help_: str) -> None:
    env = _env(flag)
    raw = os.environ.get(env)
    value = type_(raw) if raw not in (None, "") else default
    parser.add_argument(
        flag, type=type_, default=value, help=f"{help_} (env {env}; default {default!r})"
    )


def _flag(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _optional_float(raw: str) -> float | None:
    return None if raw.lower() in ("", "none", "0", "off") else float(raw)


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a whole number above 0, not {raw!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lobby", description="WebSocket lobby server for multiplayer games"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a lobby node")
    d = DEFAULTS
    _add(serve, "--host", str, d.host, "interface to listen on")
    _add(serve, "--port", int, d.port, "TCP port for ws://HOST:PORT/ws and the HTTP endpoints")
    _add(serve, "--redis-url", str, d.redis_url,
         "Redis URL; unset = embedded single-node mode with state in memory")
    _add(serve, "--redis-prefix", str, d.redis_prefix, "prefix of every Redis key and channel")
    _add(serve, "--game-server", str, d.game_server, "HOST:PORT handed out by the static allocator")
    _add(serve, "--seat-hold-seconds", float, d.seat_hold_seconds,
         "how long a dropped player's seat in a WAITING session is held for resume")
    _add(serve, "--max-message-bytes", int, d.max_message_bytes,
         "largest accepted frame; bigger ones close the socket with 1009")
    _add(serve, "--max-clients", int, d.max_clients,
         "sockets this node accepts before answering 503 (default: open-file limit - 256)")
    _add(serve, "--max-buffered-bytes", int, d.max_buffered_bytes,
         "unsent bytes after which a socket that stopped reading is dropped")
    _add(serve, "--max-players-cap", int, d.max_players_cap,
         "largest max_players a session may ask")
    _add(serve, "--default-max-players", int, d.default_max_players,
         "max_players when create_session gives none")
    _add(serve, "--rate-limit-per-second", float, d.rate_limit_per_second,
         "requests per second allowed per connection")
    _add(serve, "--rate-limit-burst", int, d.rate_limit_burst,
         "request burst allowed per connection")
    _add(serve, "--sweep-interval-seconds", float, d.sweep_interval_seconds,
         "how often this node expires seat holds and timeouts")
    _add(serve, "--ping-interval-seconds", _optional_float, d.ping_interval_seconds,
         "WebSocket keepalive ping interval and timeout; 0 disables")
    _add(serve, "--waiting-idle-seconds", float, d.waiting_idle_seconds,
         "close a WAITING session after this long without activity (reason idle)")
    _add(serve, "--connecting-timeout-seconds", float, d.connecting_timeout_seconds,
         "close a CONNECTING session whose game server never reports in (server_timeout)")
    _add(serve, "--in-progress-max-seconds", float, d.in_progress_max_seconds,
         "safety limit of an IN_PROGRESS session without the complete callback (expired)")
    _add(serve, "--server-key", str, d.server_key,
         "shared secret of the game-server HTTP callbacks and join tickets; "
         "unset = callbacks refused, no tickets")
    _add(serve, "--ticket-ttl-seconds", _positive_int, d.ticket_ttl_seconds,
         "lifetime of a join ticket (join_ticket) before the game server refuses it")
    _add(serve, "--fleetiq-group", str, d.fleetiq_group,
         "GameLift FleetIQ game server group to claim servers from; unset = static allocator")
    _add(serve, "--aws-region", str, d.aws_region, "AWS region (else AWS_REGION, us-east-1)")
    _add(serve, "--aws-endpoint-url", str, d.aws_endpoint_url,
         "GameLift endpoint override, e.g. http://127.0.0.1:9090 for lobby fleetiq-local")
    serve.add_argument(
        "--dynamodb", action="store_true", default=_flag(os.environ.get("LOBBY_DYNAMODB", "")),
        help="persist sessions to DynamoDB (env LOBBY_DYNAMODB=1; default off)",
    )
    _add(serve, "--dynamodb-table", str, d.dynamodb_table, "DynamoDB table of sessions")
    _add(serve, "--dynamodb-endpoint-url", str, d.dynamodb_endpoint_url,
         "DynamoDB endpoint override (a local DynamoDB-compatible server)")
    serve.add_argument(
        "--ws-compression", action="store_true",
        default=_flag(os.environ.get("LOBBY_WS_COMPRESSION", "")),
        help="offer permessage-deflate (env LOBBY_WS_COMPRESSION=1; default off: it costs "
             "memory per socket and lobby frames are tiny)",
    )
    _add(serve, "--node-id", str, d.node_id, "this node's id (random when unset)")
    _add(serve, "--log-level", str, d.log_level, "DEBUG, INFO, WARNING, ERROR")

    init = sub.add_parser("init-table", help="create the DynamoDB sessions table (idempotent)")
    _add(init, "--dynamodb-table", str, d.dynamodb_table, "table name")
    _add(init, "--aws-region", str, d.aws_region, "AWS region")
    _add(init, "--dynamodb-endpoint-url", str, d.dynamodb_endpoint_url, "endpoint override")

    sub.add_parser("fleetiq-local", help="run a local GameLift FleetIQ endpoint (--help for more)")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    fields = Settings.__dataclass_fields__
    return Settings(**{k: v for k, v in vars(args).items() if k in fields})


def _raise_open_file_limit() -> None:
    """One socket per player: take all the file descriptors the system allows."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "fleetiq-local":
        from lobby.fleetiq_local import main as fleetiq_main

        return fleetiq_main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        _raise_open_file_limit()
        settings = settings_from_args(args)
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        # websockets logs every open and close at INFO: noise at thousands of players.
        logging.getLogger("websockets").setLevel(
            max(logging.WARNING, logging.getLogger().level))
        from lobby.app import LobbyNode

        try:
            asyncio.run(LobbyNode(settings).serve_forever())
        except KeyboardInterrupt:
            pass
        return 0
    if args.command == "init-table":
        logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
        from lobby.persistence.dynamodb import SessionTable

        table = SessionTable(
            args.dynamodb_table, region=args.aws_region, endpoint_url=args.dynamodb_endpoint_url
        )
        print(table.init_table())
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
