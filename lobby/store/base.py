"""The session store interface: every rule of the lifecycle is one atomic call.

Two implementations keep the same semantics: `MemoryStore` (embedded mode, one
node) and `RedisStore` (Lua scripts; any number of nodes). `tests/test_store_
conformance.py` runs one suite against both.

Every change publishes its events (as a JSON text, see `lobby.events`) on the
session's channel in the same atomic step, so every node sees a session's events
in the order the changes happened, each carrying the record's version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from lobby.session import PasswordHash, SessionRecord


@dataclass(slots=True)
class PlayerInfo:
    player_id: str
    name: str
    session_id: str | None


@dataclass(slots=True)
class ResumeResult:
    player: PlayerInfo
    session: SessionRecord | None


@dataclass(slots=True)
class PasswordRequired(Exception):
    """join_session on a password session: verify this hash, then join again."""

    pw: PasswordHash


@dataclass(slots=True)
class Change:
    """A change a sweep made, for persistence: the new record, or None if deleted."""

    session_id: str
    record: SessionRecord | None
    reason: str | None = None  # why it ended, when record is None


class SessionStore(Protocol):
    """All times are ms since the epoch, passed in so that tests and nodes agree."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    # players -----------------------------------------------------------------
    async def new_player(
        self, player_id: str, name: str, token_hash: str, conn: str, now: int
    ) -> PlayerInfo: ...

    async def resume(
        self, player_id: str, token_hash: str, conn: str, now: int
    ) -> ResumeResult | None:
        """Rebind a player to a new connection; the old connection's node is told
        (a `replaced` message on its node channel). None if unknown or expired."""
        ...

    async def disconnect(self, player_id: str, conn: str, now: int, hold_ms: int) -> None:
        """The socket `conn` dropped. No-op if the player has moved to another conn."""
        ...

    # sessions ----------------------------------------------------------------
    async def create_session(
        self, player_id: str, session_id: str, name: str, max_players: int,
        pw: PasswordHash | None, now: int,
    ) -> SessionRecord: ...

    async def join_session(
        self, player_id: str, session_id: str, verified_pw: PasswordHash | None, now: int
    ) -> SessionRecord:
        """Raises PasswordRequired when the session has a password that the
        caller has not verified (verified_pw must equal the stored hash)."""
        ...

    async def leave_session(self, player_id: str, now: int) -> SessionRecord | None:
        """Returns the session after the leave, None if it was deleted."""
        ...

    async def kick(self, host_id: str, target_id: str, now: int) -> SessionRecord: ...

    async def begin_start(self, player_id: str, now: int) -> SessionRecord:
        """WAITING -> CONNECTING, host only, exactly once."""
        ...

    async def finish_start(
        self, session_id: str, server_id: str, endpoint: str, now: int
    ) -> SessionRecord | None:
        """CONNECTING -> CONNECTING with a server; publishes session_started."""
        ...

    async def fail_start(
        self, session_id: str, code: str, message: str, now: int, hold_ms: int
    ) -> SessionRecord | None:
        """CONNECTING -> WAITING; publishes session_start_failed."""
        ...

    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    async def list_sessions(
        self, limit: int, cursor: str | None
    ) -> tuple[list[SessionRecord], str | None]: ...

    async def sweep(self, now: int, limit: int = 100) -> list[Change]:
        """Remove players whose seat hold ran out. Safe to run on every node at once:
        each expired hold is taken by exactly one caller."""
        ...

    async def stats(self) -> dict[str, Any]: ...
