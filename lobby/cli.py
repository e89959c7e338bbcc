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
import re
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

from lobby.config import Settings, StartupError
from lobby.logs import FORMATS, LEVELS

DEFAULTS = Settings()
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
CLUSTER_URL_SCHEMES = ("redis+cluster", "rediss+cluster", "redis", "rediss")


class _Parser(argparse.ArgumentParser):
    """Errors in one line on stderr (exit 2), naming the flag or the variable."""

    env_errors: list[tuple[str, str]]

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _env(flag: str) -> str:
    return "LOBBY_" + flag.lstrip("-").upper().replace("-", "_")


def _add(parser: argparse.ArgumentParser, flag: str, type_: Callable[[str], Any], default: Any,
         help_: str) -> None:
    env = _env(flag)
    raw = os.environ.get(env)
    value = default
    if raw not in (None, ""):
        try:
            value = type_(raw)  # type: ignore[arg-type]
        except (ValueError, argparse.ArgumentTypeError) as err:
            # Reported by main() unless the flag, which wins, is on the command line.
            what = str(err) if isinstance(err, argparse.ArgumentTypeError) else (
                f"invalid value {raw!r}")
            errors = getattr(parser, "env_errors", None)
            if errors is None:
                errors = parser.env_errors = []  # type: ignore[attr-defined]
            errors.append((flag, f"{env}={raw!r} ({flag}): {what}"))
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


def _port(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (0-65535), not {raw!r}")
    return value


def _workers(raw: str) -> int | None:
    if raw.strip().lower() == "auto":
        return None
    return _positive_int(raw)


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(LEVELS)} (any case), not {raw!r}")
    return level


def _choice(*options: str) -> Callable[[str], str]:
    """A flag that takes one of `options` (any case)."""
    def parse(raw: str) -> str:
        kind = raw.strip().lower()
        if kind not in options:
            raise argparse.ArgumentTypeError(
                f"must be {' or '.join(options)}, not {raw!r}")
        return kind
    return parse


_event_loop = _choice("uvloop", "asyncio")
_log_format = _choice(*FORMATS)


def event_loop_for(settings: Settings) -> str:
    """The loop a node runs: --event-loop, except asyncio's with --tls-cert (uvloop's
    server-side start_tls, which the gate's TLS front needs, did not complete a
    handshake in tests/test_tls.py)."""
    if settings.tls_cert and settings.event_loop == "uvloop":
        return "asyncio"
    return settings.event_loop


def _loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop, or None for asyncio's (also where uvloop is not installed:
    it has no Windows build)."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            logging.getLogger("lobby").warning(
                "--event-loop uvloop: uvloop is not installed; using asyncio's loop")
            return None
        return uvloop.new_event_loop  # type: ignore[no-any-return]
    return None


_fleetiq_client = _choice("async", "boto3")


def _endpoint(raw: str) -> str:
    """HOST:PORT or [IPv6]:PORT, what a game client connects its ENet peer to."""
    host, sep, port = raw.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    ok = bool(sep) and bool(host) and port.isdigit() and 0 < int(port) <= 65535
    if not ok or any(c.isspace() or c in "/[]" for c in host):
        raise argparse.ArgumentTypeError(
            f"must be HOST:PORT (e.g. 127.0.0.1:6060 or [::1]:6060), not {raw!r}")
    return raw


def _url_scheme(raw: str, schemes: tuple[str, ...], example: str) -> str:
    from urllib.parse import urlsplit

    scheme = urlsplit(raw).scheme.lower() if "://" in raw else ""
    if scheme not in schemes:
        raise argparse.ArgumentTypeError(
            f"must be a URL such as {example} (schemes: "
            f"{', '.join(s + '://' for s in schemes)}), not {raw!r}")
    return raw


def _redis_url(raw: str) -> str:
    return _url_scheme(raw, REDIS_SCHEMES, "redis://HOST:6379/0")


def _redis_cluster_url(raw: str) -> str:
    return _url_scheme(raw, CLUSTER_URL_SCHEMES, "redis+cluster://HOST:PORT[,HOST:PORT...]")


def _nonnegative(what: str) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"must be {what} >= 0, not {raw!r}")
        return value
    return parse


_nonnegative_float = _nonnegative("a number of seconds")


def _attribute_keys(raw: str) -> tuple[str, ...] | None:
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    if not keys or keys == ("*",):
        return None
    for key in keys:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", key):
            raise argparse.ArgumentTypeError(f"not an attribute key: {key!r}")
    return keys


def _auth_mode(raw: str) -> str:
    if raw not in ("none", "jwt"):
        raise argparse.ArgumentTypeError(f"must be none or jwt, not {raw!r}")
    return raw


def _cidrs(raw: str) -> str:
    from lobby.addresses import parse_proxies

    try:
        parse_proxies(raw)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a CIDR list: {err}") from None
    return raw


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lobby", description="WebSocket lobby server for multiplayer games"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", help="run a lobby node")
    d = DEFAULTS
    _add(serve, "--host", str, d.host, "interface to listen on")
    _add(serve, "--port", _port, d.port, "TCP port for ws://HOST:PORT/ws and the HTTP endpoints")
    _add(serve, "--redis-url", _redis_url, d.redis_url,
         "Redis URL; unset = embedded single-node mode with state in memory")
    _add(serve, "--redis-cluster-url", _redis_cluster_url, d.redis_cluster_url,
         "Redis Cluster startup nodes, redis+cluster://HOST:PORT[,HOST:PORT...] (database 0 "
         "only); instead of --redis-url")
    _add(serve, "--redis-sentinel", str, d.redis_sentinel,
         "Sentinel: HOST:PORT[,HOST:PORT...] of the sentinels, with --redis-sentinel-master; "
         "instead of --redis-url")
    _add(serve, "--redis-sentinel-master", str, d.redis_sentinel_master,
         "the master's name in the sentinels' configuration (sentinel monitor NAME ...)")
    _add(serve, "--redis-prefix", str, d.redis_prefix, "prefix of every Redis key and channel")
    _add(serve, "--redis-buckets", int, d.redis_buckets,
         "session buckets (hash slots) the sessions are spread over; fixed for a deployment "
         "(unset: 1 on one Redis or Sentinel, 12 on a Redis Cluster, about 4 per master)")
    _add(serve, "--game-server", _endpoint, d.game_server,
         "HOST:PORT handed out by the static allocator")
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
    _add(serve, "--node-timeout-seconds", float, d.node_timeout_seconds,
         "a node silent this long (each sweep is its heartbeat) is taken for dead: "
         "its players' seats go on hold (Redis mode)")
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
    _add(serve, "--fleetiq-client", _fleetiq_client, d.fleetiq_client,
         "async: GameLift calls signed and sent on the event loop; boto3: the boto3 client "
         "in a thread pool (about 1 ms of CPU a call, under the GIL)")
    _add(serve, "--fleetiq-concurrency", _positive_int, d.fleetiq_concurrency,
         "GameLift calls in flight at once (connections with async, threads with boto3)")
    _add(serve, "--fleetiq-claims-per-second", _nonnegative("a number of claims a second"),
         d.fleetiq_claims_per_second,
         "pace ClaimGameServer calls to this many a second, first come first served: this "
         "node's share of the account's limit (AWS's default: 20 a second, bursts of 40, per "
         "account); 0: not paced (a throttled claim is retried for 30 s either way)")
    _add(serve, "--fleetiq-claim-burst", _positive_int, d.fleetiq_claim_burst,
         "with --fleetiq-claims-per-second: claims sent at once before the pacing starts")
    serve.add_argument(
        "--dynamodb", action="store_true", default=_flag(os.environ.get("LOBBY_DYNAMODB", "")),
        help="persist sessions to DynamoDB (env LOBBY_DYNAMODB=1; default off)",
    )
    _add(serve, "--dynamodb-table", str, d.dynamodb_table, "DynamoDB table of sessions")
    _add(serve, "--dynamodb-endpoint-url", str, d.dynamodb_endpoint_url,
         "DynamoDB endpoint override (a local DynamoDB-compatible server)")
    _add(serve, "--durability-max-lag-seconds", float, d.durability_max_lag_seconds,
         "GET /readyz answers 503 once the oldest session change not yet written to "
         "DynamoDB is older than this")
    serve.add_argument(
        "--ws-compression", action="store_true",
        default=_flag(os.environ.get("LOBBY_WS_COMPRESSION", "")),
        help="offer permessage-deflate (env LOBBY_WS_COMPRESSION=1; default off: it costs "
             "memory per socket and lobby frames are tiny)",
    )
    _add(serve, "--indexed-attributes", _attribute_keys, d.indexed_attributes,
         "comma-separated session attribute keys with search indexes (e.g. mode,map,region); "
         "unset or * = every key")
    _add(serve, "--node-id", str, d.node_id, "this node's id (random when unset)")
    _add(serve, "--workers", _workers, None,
         "node processes on this port (SO_REUSEPORT), each a full node with its own id "
         "(<node-id>-w1, ...); auto = one per core in Redis mode, 1 in embedded mode, "
         "which cannot run more")
    serve.add_argument(
        "--reuse-port", action="store_true",
        default=_flag(os.environ.get("LOBBY_REUSE_PORT", "")),
        help="listen with SO_REUSEPORT so that several lobby processes (Redis mode) share "
             "the port; --workers sets it for its workers (env LOBBY_REUSE_PORT=1; "
             "default off)",
    )
    _add(serve, "--log-level", _log_level, d.log_level,
         "DEBUG, INFO, WARNING, ERROR or CRITICAL (DEBUG also prints start-up tracebacks)")
    _add(serve, "--log-format", _log_format, d.log_format,
         "text, or json: one object per line (time, level, logger, node, message, fields)")
    _add(serve, "--event-loop", _event_loop, d.event_loop,
         "uvloop, or asyncio: Python's own event loop (uvloop takes about a fifth less "
         "CPU per request)")
    _add(serve, "--startup-timeout-seconds", _nonnegative_float, d.startup_timeout_seconds,
         "how long start-up retries an unreachable Redis or DynamoDB before exiting 1")
    _add(serve, "--drain-seconds", _nonnegative_float, d.drain_seconds,
         "on SIGTERM: how long clients (told with close code 1012) get to move to another "
         "node before the rest are closed")
    _add(serve, "--admin-key", str, d.admin_key,
         "bearer key of the admin API and console at /admin/; unset = admin off")
    _add(serve, "--metrics-key", str, d.metrics_key,
         "bearer key required by /metrics and /metrics.json; unset = open")
    _add(serve, "--ready-max-backlog", _positive_int, d.ready_max_backlog,
         "GET /readyz answers 503 while more sessions than this wait for their DynamoDB write")
    # identity: per-address limits (all per node), trusted proxies
    _add(serve, "--max-sockets-per-ip", _positive_int, d.max_sockets_per_ip,
         "WebSockets one client address may hold on this node; more get HTTP 429")
    _add(serve, "--max-handshakes", _positive_int, d.max_handshakes,
         "TCP connections that have not finished their handshake; more are closed at once")
    _add(serve, "--max-handshakes-per-ip", _positive_int, d.max_handshakes_per_ip,
         "of those, per peer address (trusted proxies exempt)")
    _add(serve, "--handshake-timeout-seconds", float, d.handshake_timeout_seconds,
         "time a connection gets to finish its TLS and WebSocket handshake")
    _add(serve, "--trusted-proxy", _cidrs, d.trusted_proxy,
         "comma-separated CIDRs of load balancers whose X-Forwarded-For names the client")
    _add(serve, "--password-guesses-per-session", _positive_int, d.password_guesses_per_session,
         "password guesses a minute on one session from all addresses (all nodes); then the "
         "session locks for addresses that guessed")
    _add(serve, "--password-guesses-per-address", _positive_int, d.password_guesses_per_address,
         "password guesses a minute from one client address on all sessions (all nodes)")
    _add(serve, "--password-lockout-seconds", float, d.password_lockout_seconds,
         "first lockout past a guess limit; each consecutive one doubles, up to 15 min")
    _add(serve, "--tls-cert", str, d.tls_cert,
         "PEM certificate (chain) to serve wss:// directly; else put TLS at the load balancer")
    _add(serve, "--tls-key", str, d.tls_key, "PEM private key of --tls-cert")
    _add(serve, "--auth", _auth_mode, d.auth,
         "none: a player is whoever hello says (a start-up warning says so); jwt: hello "
         "needs a token signed by the game's backend, the player id is its sub")
    _add(serve, "--jwt-secret", str, d.jwt_secret, "HS256 shared secret of the tokens")
    _add(serve, "--jwt-jwks-url", str, d.jwt_jwks_url,
         "JWKS URL of the tokens' public keys (RS256/ES256...), cached, refreshed on an "
         "unknown kid")
    _add(serve, "--jwt-public-key-file", str, d.jwt_public_key_file,
         "PEM public key of the tokens (RS256/ES256...)")
    _add(serve, "--jwt-issuer", str, d.jwt_issuer, "required iss claim")
    _add(serve, "--jwt-audience", str, d.jwt_audience, "required aud claim")
    _add(serve, "--jwt-leeway-seconds", float, d.jwt_leeway_seconds,
         "clock skew allowed when checking exp and nbf")
    _add(serve, "--jwt-name-claim", str, d.jwt_name_claim,
         "claim holding the display name (else the hello's name)")
    _add(serve, "--jwt-jwks-refresh-seconds", float, d.jwt_jwks_refresh_seconds,
         "age after which the JWKS is fetched again")
    _add(serve, "--jwt-jwks-min-refresh-seconds", float, d.jwt_jwks_min_refresh_seconds,
         "at most one JWKS fetch per this many seconds for tokens with an unknown kid")
    _add(serve, "--password-queue", _positive_int, d.password_queue,
         "scrypt jobs (joins and creates with a password) queued or running on this node, "
         "at most a quarter of them from one client address; past it RATE_LIMITED at once")

    init = sub.add_parser("init-table", help="create the DynamoDB sessions table (idempotent)")
    _add(init, "--dynamodb-table", str, d.dynamodb_table, "table name")
    _add(init, "--aws-region", str, d.aws_region, "AWS region")
    _add(init, "--dynamodb-endpoint-url", str, d.dynamodb_endpoint_url, "endpoint override")
    _add(init, "--wait-seconds", _nonnegative_float, 10.0,
         "how long to retry an endpoint that does not answer yet")

    sub.add_parser("fleetiq-local", help="run a local GameLift FleetIQ endpoint (--help for more)")

    from lobby.terminal import add_parser as add_client_parser

    add_client_parser(sub)

    schema = sub.add_parser(
        "schema", help="write schema/lobby.schema.json and schema/asyncapi.yaml from the models")
    schema.add_argument("--out", default=None,
                        help="directory to write to (default: ./schema)")
    schema.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when the files differ from the models")
    parser.commands = {"serve": serve, "init-table": init}  # type: ignore[attr-defined]
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


def _fail(code: int, message: str, debug: bool) -> int:
    if debug:
        import traceback

        traceback.print_exc()
    sys.stderr.write(f"lobby serve: error: {message}\n")
    return code


def _supervise(argv: list[str], workers: int, settings: Settings) -> int:
    from lobby.workers import Supervisor, resolve_port

    try:
        port = resolve_port(settings.host, settings.port)
    except OSError as err:
        return _fail(2, f"--port (LOBBY_PORT): cannot listen on {settings.host}:"
                     f"{settings.port}: {err.strerror or err}", settings.log_level == "DEBUG")
    assert settings.node_id is not None
    flags = argv[argv.index("serve") + 1:]
    return Supervisor(flags, workers, port, settings.node_id, settings.drain_seconds).run()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "fleetiq-local":
        from lobby.fleetiq_local import main as fleetiq_main

        return fleetiq_main(argv[1:]) or 0
    parser = build_parser()
    args = parser.parse_args(argv)
    subparser = parser.commands.get(args.command)  # type: ignore[attr-defined]
    for flag, message in getattr(subparser, "env_errors", []):
        if not any(a == flag or a.startswith(flag + "=") for a in argv):
            subparser.error(message)
    if args.command == "serve":
        settings = settings_from_args(args)
        from lobby import logs

        # Chosen here so that every line, from the first, names the node.
        settings.node_id = settings.node_id or secrets.token_hex(4)
        workers = args.workers
        # Any of the three Redis deployments shares the sessions between processes.
        shared = settings.redis_url or settings.redis_cluster_url or settings.redis_sentinel
        if not shared:
            if workers is not None and workers > 1:
                return _fail(2, f"--workers {workers} (LOBBY_WORKERS): embedded mode keeps "
                             "the sessions in one process's memory, so it runs one process; "
                             "give --redis-url to run several workers, or --workers 1", False)
            if settings.reuse_port:
                return _fail(2, "--reuse-port (LOBBY_REUSE_PORT): embedded mode keeps the "
                             "sessions in one process's memory; two processes sharing its "
                             "port would be two separate lobbies. Give --redis-url", False)
        elif workers is None:
            from lobby.workers import cores

            workers = cores()
        logs.configure(settings.log_level, settings.log_format, settings.node_id,
                       tag_node=settings.reuse_port or (workers or 1) > 1)
        if workers is not None and workers > 1:
            return _supervise(argv, workers, settings)
        _raise_open_file_limit()
        try:
            from lobby.app import LobbyNode
            from lobby.workers import notify_ready

            with asyncio.Runner(loop_factory=_loop_factory(event_loop_for(settings))) as runner:
                runner.run(LobbyNode(settings).serve_forever(on_ready=notify_ready))
        except KeyboardInterrupt:
            pass
        except StartupError as err:
            return _fail(err.exit_code, str(err), settings.log_level == "DEBUG")
        except Exception as err:
            # A start-up failure nobody anticipated: still one line, unless debugging.
            return _fail(1, f"{type(err).__name__}: {err}", settings.log_level == "DEBUG")
        return 0
    if args.command == "client":
        from lobby.terminal import main as client_main

        return client_main(args)
    if args.command == "schema":
        from pathlib import Path

        from lobby import schema as lobby_schema

        out = Path(args.out or "schema")
        if args.check:
            stale = lobby_schema.stale(out)
            for name in stale:
                print(f"{out / name} is stale: run `lobby schema`", file=sys.stderr)
            return 1 if stale else 0
        for path in lobby_schema.write(out):
            print(path)
        return 0
    if args.command == "init-table":
        logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
        from lobby.persistence.dynamodb import SessionTable

        table = SessionTable(
            args.dynamodb_table, region=args.aws_region, endpoint_url=args.dynamodb_endpoint_url
        )
        # The endpoint may still be starting (moto, DynamoDB Local in a container):
        # connection failures are retried for a bounded time.
        from botocore.exceptions import ConnectionError as BotoConnectionError

        deadline = time.monotonic() + args.wait_seconds
        while True:
            try:
                print(table.init_table())
                return 0
            except BotoConnectionError as err:
                if time.monotonic() >= deadline:
                    sys.stderr.write(
                        f"lobby init-table: error: --dynamodb-endpoint-url: DynamoDB "
                        f"unreachable after {args.wait_seconds:g}s: {err}\n")
                    return 1
                time.sleep(0.2)
    return 2


if __name__ == "__main__":
    sys.exit(main())
