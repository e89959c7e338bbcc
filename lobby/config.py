"""Server settings: one dataclass, filled from flags or LOBBY_* variables (cli.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None  # None: embedded mode (state in process memory)
    # Or a Redis Cluster (startup nodes), or Sentinel: lobby/redisconn.py builds the client.
    redis_cluster_url: str | None = None  # redis+cluster://HOST:PORT[,HOST:PORT...]
    redis_sentinel: str | None = None  # HOST:PORT[,HOST:PORT...] of the sentinels
    redis_sentinel_master: str | None = None  # the monitored master's name
    redis_prefix: str = "lobby:"
    # Session buckets (lobby/store/keys.py): fixed for a deployment; more than the
    # masters of a Redis Cluster (e.g. 4 per master) so sessions spread over them.
    redis_buckets: int | None = None  # None: 1, or CLUSTER_BUCKETS on a Redis Cluster
    game_server: str = "127.0.0.1:6060"  # static allocator's endpoint
    seat_hold_seconds: float = 60.0
    max_message_bytes: int = 64 * 1024
    max_clients: int | None = None  # None: what the open-file limit allows
    max_buffered_bytes: int = 1 << 20  # unsent bytes after which a socket is dropped
    max_players_cap: int = 16
    default_max_players: int = 8
    rate_limit_per_second: float = 20.0
    rate_limit_burst: int = 40
    sweep_interval_seconds: float = 1.0
    ping_interval_seconds: float | None = 20.0
    # permessage-deflate is off: it costs ~43 KiB per socket (57 vs 15 KiB RSS per idle
    # client, measured) to shrink frames of a few hundred bytes (docs/benchmarks.md).
    ws_compression: bool = False
    waiting_idle_seconds: float = 600.0
    connecting_timeout_seconds: float = 120.0
    in_progress_max_seconds: float = 6 * 3600.0  # safety net if "complete" never comes
    server_key: str | None = None  # shared secret of the game-server callbacks and tickets
    ticket_ttl_seconds: int = 300  # how long a join ticket lets its player into the game server
    # GameLift FleetIQ (unset: the static allocator)
    fleetiq_group: str | None = None
    aws_region: str | None = None
    aws_endpoint_url: str | None = None  # FleetIQ endpoint override (lobby fleetiq-local)
    # "async": GameLift calls signed and sent on the event loop (lobby/aws_json.py);
    # "boto3": the boto3 client in a thread pool (~1 ms of CPU a call under the GIL)
    fleetiq_client: str = "async"
    fleetiq_concurrency: int = 32  # GameLift calls in flight (connections or threads)
    # ClaimGameServer pacing, this node's share of the account's limit (AWS: 20/s,
    # bursts of 40); 0: not paced (throttled claims are still retried for 30 s).
    fleetiq_claims_per_second: float = 0.0
    fleetiq_claim_burst: int = 40
    # DynamoDB persistence (off unless dynamodb is set)
    dynamodb: bool = False
    dynamodb_table: str = "lobby_sessions"
    dynamodb_endpoint_url: str | None = None  # defaults to aws_endpoint_url
    # /readyz says 503 once the oldest change not yet in DynamoDB is older than this
    durability_max_lag_seconds: float = 10.0
    node_id: str | None = None  # random when unset
    # SO_REUSEPORT on the listening socket: several processes share the port
    # (set by `--workers N` for its workers; Redis mode only).
    reuse_port: bool = False
    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one object per line (lobby/logs.py)
    # uvloop (libuv, transports in C) or Python's own asyncio loop: uvloop takes
    # 18-25% less of the node's CPU per change (docs/benchmarks.md, session 7).
    event_loop: str = "uvloop"
    startup_timeout_seconds: float = 10.0  # retrying an unreachable Redis/DynamoDB at start
    drain_seconds: float = 10.0  # SIGTERM: time clients get to move before the rest are closed
    admin_key: str | None = None  # bearer key of /admin/ (unset: admin API off)
    metrics_key: str | None = None  # bearer key of /metrics (unset: open)
    # Attribute keys with search indexes (list_sessions filters on them are index
    # lookups; filters on other keys are checked on the sessions a page walks).
    # None: every attribute key is indexed.
    indexed_attributes: tuple[str, ...] | None = None
    # A node whose heartbeat (each sweep) is this old is taken for dead: its
    # players' sockets are dropped (seat hold, then player_left timeout).
    node_timeout_seconds: float = 10.0
    ready_max_backlog: int = 1000  # /readyz says 503 past this many unwritten sessions


    # Per-address limits (lobby/addresses.py); all per node.
    max_sockets_per_ip: int = 32  # WebSockets per client address (NAT'd households fit)
    max_handshakes: int = 128  # TCP connections that have not sent their request yet
    max_handshakes_per_ip: int = 16  # of those, per peer address (trusted proxies exempt)
    handshake_timeout_seconds: float = 5.0  # to finish the WebSocket (and TLS) handshake
    trusted_proxy: str | None = None  # CIDRs whose X-Forwarded-For names the client
    # Password guesses, counted in the store (shared by every node)
    password_guesses_per_session: int = 10  # a minute, then the session locks
    password_guesses_per_address: int = 20  # a minute, on all sessions together (NAT)
    password_lockout_seconds: float = 60.0  # the first lock; doubles, up to 15 min
    password_queue: int = 8  # scrypt jobs in flight, a quarter per address; then RATE_LIMITED
    tls_cert: str | None = None  # PEM certificate chain: serve wss:// and https://
    tls_key: str | None = None  # its PEM private key
    # Player identity (lobby/auth.py): "none" (anyone is who they say) or "jwt"
    auth: str = "none"
    jwt_secret: str | None = None  # HS256/384/512
    jwt_jwks_url: str | None = None  # RS*/PS*/ES*/EdDSA keys by kid (Cognito, Auth0, ...)
    jwt_public_key_file: str | None = None  # one PEM public key
    jwt_issuer: str | None = None  # required iss, when set
    jwt_audience: str | None = None  # required aud, when set
    jwt_leeway_seconds: float = 30.0  # clock skew allowed on exp/nbf/iat
    jwt_name_claim: str = "name"  # the display name's claim (else hello's name)
    jwt_jwks_refresh_seconds: float = 600.0  # a JWKS older than this is fetched again
    jwt_jwks_min_refresh_seconds: float = 30.0  # at most one fetch per this, for unknown kids


class StartupError(Exception):
    """A node cannot start: one line for the operator, and the process's exit code
    (2: the configuration is wrong; 1: a dependency stayed unreachable)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
