"""Server settings: one dataclass, filled from flags or LOBBY_* variables (cli.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None  # None: embedded mode (state in process memory)
    redis_prefix: str = "lobby:"
    game_server: str = "127.0.0.1:6060"  # static allocator's endpoint
    seat_hold_seconds: float = 60.0
    max_message_bytes: int = 64 * 1024
    max_players_cap: int = 16
    default_max_players: int = 8
    rate_limit_per_second: float = 20.0
    rate_limit_burst: int = 40
    sweep_interval_seconds: float = 1.0
    ping_interval_seconds: float | None = 20.0
    node_id: str | None = None  # random when unset
    log_level: str = "INFO"
