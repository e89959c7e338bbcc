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

# Chat limits (protocol.md, send_chat): per player, CHAT_RATE messages in any
# CHAT_WINDOW_MS; the last CHAT_KEEP messages of a session are kept with it.
CHAT_RATE = 5
CHAT_WINDOW_MS = 5_000
CHAT_KEEP = 50

# One change of a node's per-address WebSocket counts: ("acquire" | "release" |
# "forget", client address). See SessionStore.address_apply.
AddressOp = tuple[str, str]


@dataclass(slots=True)
class PlayerInfo:
    player_id: str
    name: str
    session_id: str | None


@dataclass(slots=True)
class ResumeResult:
    player: PlayerInfo
    session: SessionRecord | None
    reconnected: bool = False  # the seat was held: player_reconnected was published


@dataclass(slots=True)
class PasswordRequired(Exception):
    """join_session on a password session: verify this hash, then join again."""

    pw: PasswordHash


@dataclass(slots=True)
class Change:
    """A change to persist: the session's record after it, and why it ended if it did."""

    session_id: str
    record: SessionRecord
    ended: str | None = None  # "abandoned", "completed", "idle", "server_timeout", "expired"


@dataclass(slots=True, frozen=True)
class GuessLimits:
    """Password guesses allowed before scrypt runs (password_guess.lua says how)."""

    per_session: int = 10  # per window, on one session, from all addresses together
    per_address: int = 20  # per window, from one client address, on all sessions together
    window_ms: int = 60_000
    lock_ms: int = 60_000  # the first lockout; each consecutive one doubles
    lock_max_ms: int = 900_000


@dataclass(slots=True)
class GuessVerdict:
    """None of these fields set: verify the guess. Else refused for retry_ms."""

    retry_ms: int = 0
    scope: str = ""  # "session" or "address"


@dataclass(slots=True)
class Timeouts:
    """How long a session may stay in each state without the change that moves it on."""

    idle_ms: int  # WAITING without activity (join, leave, start failure)
    connecting_ms: int  # CONNECTING without the game server reporting in
    in_progress_ms: int  # IN_PROGRESS without the complete callback (safety net)
    # Node liveness: a sweep is its caller's heartbeat, good for node_ms; the
    # sockets of a node whose heartbeat lapsed are dropped with a hold of hold_ms.
    node_ms: int = 10_000
    hold_ms: int = 60_000


@dataclass(slots=True)
class SweepResult:
    epoch: str | None  # the store's generation; None means Redis came back empty
    changes: list[Change]
    # The caller's heartbeat had lapsed (or it is new): other nodes may have
    # dropped its sockets, so it must reconcile them with the store.
    revived: bool = False
    more: bool = False  # dead nodes' sockets remain to be dropped: sweep again now


@dataclass(slots=True)
class RestoreLease:
    """Where the rebuild of an emptied store stands, as seen by one would-be owner."""

    epoch: str | None  # set: the store has a generation, there is nothing to rebuild
    mine: bool  # the caller holds (or renewed) the rebuild lease
    holder: str | None = None  # the other owner while it is busy


@dataclass(slots=True)
class LiveClient:
    """A socket this node still holds, to re-register after a store rebuild."""

    player_id: str
    name: str
    token_hash: str
    conn: str
    session_id: str | None


@dataclass(slots=True)
class Verdict:
    """What the store says of a live socket (reconcile)."""

    kind: str  # "OK", "REPLACED" (on another socket now) or "OUT" (not in its session)
    session: SessionRecord | None  # with OUT: the session it thought it was in, if alive


class SessionStore(Protocol):
    """All times are ms since the epoch, passed in so that tests and nodes agree.

    Requests on "the caller's session" take `session_id`, the session the node
    believes the caller is in: a hint that saves the Redis store a read of the
    player's record (the session's member list decides; a stale hint falls back
    to the record). The memory store needs no hint."""

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

    async def claim(
        self, player_id: str, name: str, token_hash: str, conn: str, now: int
    ) -> tuple[ResumeResult, bool]:
        """A verified identity takes its player (created with `name` if new, True):
        like `resume` without the token check; the new token hash replaces the old."""
        ...

    async def disconnect(
        self, player_id: str, conn: str, now: int, hold_ms: int
    ) -> SessionRecord | None:
        """The socket `conn` dropped. No-op if the player has moved to another conn.
        A member's seat is held: the session after that (player_disconnected
        published), else None."""
        ...

    # sessions ----------------------------------------------------------------
    async def create_session(
        self, player_id: str, session_id: str, name: str, max_players: int,
        pw: PasswordHash | None, now: int, *, attributes: dict[str, Any] | None = None,
        visibility: str = "public", codes: list[str] | None = None,
        indexed: tuple[str, ...] | None = None, start_rule: str = "host", min_players: int = 1,
    ) -> SessionRecord:
        """`codes`: candidate join codes (default: random ones), the first one no
        live session holds is taken (INTERNAL if none is free). `indexed`: the attribute keys with
        search indexes (None: all)."""
        ...

    async def join_session(
        self, player_id: str, session_id: str, verified_pw: PasswordHash | None, now: int
    ) -> SessionRecord:
        """Raises PasswordRequired when the session has a password that the
        caller has not verified (verified_pw must equal the stored hash)."""
        ...

    async def join_session_chat(
        self, player_id: str, session_id: str, verified_pw: PasswordHash | None, now: int
    ) -> tuple[SessionRecord, list[dict[str, Any]]]:
        """join_session, and the session's kept chat read in the same atomic step."""
        ...

    async def leave_session(self, player_id: str, now: int, *,
                            session_id: str | None = None) -> Change:
        """The session after the leave; `ended` is "abandoned" if it was the last member."""
        ...

    async def kick(
        self, host_id: str, target_id: str, now: int, *, ban: bool = False,
        session_id: str | None = None,
    ) -> SessionRecord:
        """With `ban`, the target's joins are refused (BANNED) for the session's life."""
        ...

    async def update_session(
        self, host_id: str, changes: dict[str, Any], now: int, *,
        indexed: tuple[str, ...] | None = None, attribute_limit: int = 16,
        session_id: str | None = None,
    ) -> SessionRecord:
        """Host only, WAITING only; publishes session_updated. `changes` holds any of
        name, max, pw (a hash, or None to remove it), attrs (None values delete
        keys), vis, locked."""
        ...

    async def promote(self, host_id: str, target_id: str, now: int, *,
                      session_id: str | None = None) -> SessionRecord:
        """Host only: `target_id` becomes the host; publishes host_changed."""
        ...

    async def update_player(
        self, player_id: str, attributes: dict[str, Any], now: int, *, attribute_limit: int = 8,
        session_id: str | None = None,
    ) -> SessionRecord:
        """A member's own attributes (None values delete keys); publishes player_updated."""
        ...

    async def begin_start(self, player_id: str, now: int, *,
                          session_id: str | None = None) -> SessionRecord:
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

    async def mark_in_progress(self, session_id: str, now: int) -> SessionRecord:
        """CONNECTING -> IN_PROGRESS (the game server reports in); idempotent."""
        ...

    async def complete(self, session_id: str, reason: str, now: int) -> Change:
        """End the session in any state; members get session_closed with `reason`."""
        ...

    async def set_ready(self, player_id: str, ready: bool, now: int, *,
                        session_id: str | None = None) -> SessionRecord:
        """The member's ready flag, WAITING only; player_ready when it changes."""
        ...

    async def send_chat(
        self, session_id: str, player_id: str, text: str, now: int
    ) -> dict[str, Any]:
        """Members only, CHAT_RATE per CHAT_WINDOW_MS per player: the message as
        kept, {seq, player_id, name, text, sent_at}, after publishing it."""
        ...

    async def chat_history(self, session_id: str, player_id: str) -> list[dict[str, Any]]:
        """The session's kept messages, oldest first; members only."""
        ...

    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    async def session_of_code(self, code: str) -> str | None:
        """The live session holding this (normalised) join code."""
        ...

    async def get_session_by_server(self, server_id: str) -> SessionRecord | None:
        """The live session whose game server is `server_id` (set by finish_start).
        A server is reused by later sessions: the latest one to be given it wins,
        and the end of an earlier one leaves the later one's entry alone."""
        ...

    async def list_sessions(
        self, limit: int, cursor: str | None, *, query: dict[str, Any] | None = None
    ) -> tuple[list[SessionRecord], str | None]:
        """A page of listed sessions and the cursor of the next (None: the last).
        `query`: sort ("newest", "oldest", "most_players", "fewest_players"), conds
        ([key, op, value] that must all hold), min_free, has_pw, indexed (the
        attribute keys with indexes, None: all), token (names a new player-count
        order). A page may hold fewer than `limit` sessions, even none, with a
        next cursor: it walks at most search.SCAN_BUDGET candidates. A cursor
        that is not one, or has expired, is BAD_REQUEST."""
        ...

    async def sweep(self, now: int, timeouts: Timeouts, limit: int = 100,
                    node: str | None = None, fresh: bool = False) -> SweepResult:
        """Remove players whose seat hold ran out and close sessions past their
        state's timeout. Safe on every node at once: each expiry is taken once.
        With `node`, also that node's heartbeat (good for timeouts.node_ms);
        the sockets of nodes whose heartbeat lapsed are dropped (as disconnect).
        `fresh` (a process's first sweep): sockets still on the books under this
        node id belong to an earlier process with the same id, and are dropped."""
        ...

    async def reconcile(self, clients: list[LiveClient], now: int, epoch: str | None = None
                        ) -> list[Verdict] | None:
        """Check this node's live sockets against the store after it could not hear
        it (link cut, taken for dead); the store wins. One verdict per client, or
        None (nothing done) if the store is not at `epoch` (emptied meanwhile)."""
        ...

    async def restore(
        self, epoch: str, records: list[SessionRecord], hold_ms: int, now: int
    ) -> tuple[str, int]:
        """Rebuild an emptied store from persisted records, unless another node
        already did: returns the store's epoch and how many sessions were restored.
        The whole lease protocol below in one call (waits while another owner works)."""
        ...

    # The rebuild in bounded steps, one owner at a time (lobby/recovery.py drives it).
    async def take_restore_lease(self, owner: str, lease_ms: int) -> RestoreLease:
        """Acquire or renew the rebuild lease, or learn that the store has an epoch."""
        ...

    async def drop_restore_lease(self, owner: str) -> None: ...

    async def restore_batch(
        self, owner: str, batch: str, hold_ms: int, lease_ms: int, now: int
    ) -> int | None:
        """Restore the records of `batch` (a JSON list, see redis.restore_batches)
        that do not exist yet, renewing the lease; None when the caller does not
        hold the lease (any more)."""
        ...

    async def finish_restore(self, owner: str, epoch: str) -> str | None:
        """Set the epoch and release the lease; the store's epoch, '' if this
        owner's buckets are done while other owners still rebuild theirs, None if
        the lease was lost before the end."""
        ...

    async def current_epoch(self) -> str | None:
        """The store's generation; None while it is empty or being rebuilt."""
        ...

    async def rebind(self, clients: list[LiveClient], now: int) -> int:
        """Give players still connected to this node their sockets back."""
        ...

    async def stats(self) -> dict[str, Any]: ...

    async def scan_sessions(
        self, cursor: str | None, count: int
    ) -> tuple[list[SessionRecord], str | None]:
        """Every live session in any state, about `count` at a time, for operators
        (admin API, metrics); the next cursor is None at the end. Sessions changed
        during a scan may be seen twice or not at all."""
        ...

    # abuse limits shared by every node -----------------------------------------
    async def password_guess(self, session_id: str, address: str, now: int,
                             limits: GuessLimits) -> GuessVerdict:
        """Count a guess before it is verified, or refuse it (RATE_LIMITED)."""
        ...

    async def password_refund(self, session_id: str, address: str, now: int,
                              limits: GuessLimits) -> None:
        """The counted guess was right: it does not count against anyone."""
        ...

    # WebSockets per client address, across nodes (--max-sockets-per-ip) -----------
    # Counted per node *incarnation* (node id and a suffix of the process), which
    # keeps a heartbeat: the counts of one whose heartbeat lapsed are dropped by
    # address_sweep, so a killed node cannot lock an address out.
    async def address_apply(self, incarnation: str, ops: list[AddressOp], limit: int
                            ) -> list[bool]:
        """The ops in order, one result each. "acquire": one more socket from the
        address if all incarnations together hold fewer than `limit` (False: not
        counted), and the address is on the incarnation's list; "release": one
        fewer (never below zero); "forget": off the list (it holds none)."""
        ...

    async def address_beat(self, incarnation: str, now: int, lapse_ms: int,
                           first: bool = False) -> bool:
        """Renew the heartbeat for `lapse_ms` (`first`: register it). False when it
        had lapsed or is unknown: its counts are dropped or being dropped, and the
        node goes on under a new incarnation (address_restore)."""
        ...

    async def address_restore(self, incarnation: str, counts: dict[str, int]) -> None:
        """Write a node's counts (address -> sockets) under a new incarnation."""
        ...

    async def address_sweep(self, now: int, limit: int = 10) -> int:
        """Drop the counts of up to `limit` incarnations whose heartbeat lapsed;
        how many. Safe on every node at once."""
        ...

    async def address_drop(self, incarnation: str) -> None:
        """Drop every count of the incarnation, and its heartbeat."""
        ...

    async def address_count(self, address: str) -> int:
        """Sockets counted from the address, on all incarnations."""
        ...
