"""Join tickets: the lobby's signed word that a player is a member of a session.

A player presents its ticket to the game server, which checks it offline with
the shared server key: no call back to the lobby per connecting player. The
format is part of the wire contract (protocol.md, `join_ticket`):

    v1.SESSION_ID.PLAYER_ID.EXPIRES_AT.SIG

SIG is the lowercase hex HMAC-SHA256, keyed with the server key (UTF-8), of
`v1.SESSION_ID.PLAYER_ID.EXPIRES_AT` (UTF-8); EXPIRES_AT is integer Unix seconds.
The module depends on nothing else in `lobby`, so a Python game server can
copy or import it alone.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal

VERSION = "v1"
_SIG_CHARS = 64  # hex digits of a SHA-256 digest

Reason = Literal["malformed", "bad_signature", "expired"]


@dataclass(frozen=True, slots=True)
class TicketClaims:
    """What a valid ticket vouches for. The game server still checks that
    `session_id` is the session it serves and `player_id` one of its players."""

    session_id: str
    player_id: str
    expires_at: int  # Unix seconds


class InvalidTicket(ValueError):
    """A ticket that must be refused; `reason` says why."""

    def __init__(self, reason: Reason) -> None:
        self.reason: Reason = reason
        super().__init__(reason)


def _key_bytes(key: str | bytes) -> bytes:
    raw = key.encode("utf-8") if isinstance(key, str) else key
    if not raw:
        # An empty key would make every ticket forgeable by anyone.
        raise ValueError("the ticket key must not be empty")
    return raw


def _signature(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()


def make_ticket(key: str | bytes, session_id: str, player_id: str, expires_at: int) -> str:
    """The ticket saying `player_id` is in `session_id` until `expires_at`."""
    for what, value in (("session_id", session_id), ("player_id", player_id)):
        # The fields are separated by dots: one inside an id would shift them.
        if not value or "." in value:
            raise ValueError(f"{what} must be non-empty and contain no '.': {value!r}")
    if isinstance(expires_at, bool) or not isinstance(expires_at, int) or expires_at < 0:
        raise ValueError(f"expires_at must be a non-negative int: {expires_at!r}")
    message = f"{VERSION}.{session_id}.{player_id}.{expires_at}"
    return f"{message}.{_signature(_key_bytes(key), message)}"


def verify_ticket(key: str | bytes, ticket: str, now: float) -> TicketClaims:
    """The claims of a genuine ticket not yet expired at `now` (Unix seconds);
    raises InvalidTicket otherwise. A ticket is valid while now < expires_at."""
    parts = ticket.split(".")
    if len(parts) != 5 or parts[0] != VERSION:
        raise InvalidTicket("malformed")
    _, session_id, player_id, expires, sig = parts
    if not session_id or not player_id or not (expires.isascii() and expires.isdigit()):
        raise InvalidTicket("malformed")
    if len(sig) != _SIG_CHARS:
        raise InvalidTicket("malformed")
    expected = _signature(_key_bytes(key), ticket[: -(_SIG_CHARS + 1)])
    # Bytes, because compare_digest refuses non-ASCII str; constant time so the
    # time taken does not tell a forger how much of a signature was right.
    if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")):
        raise InvalidTicket("bad_signature")
    # Checked after the signature: only the lobby's own word about expiry counts.
    expires_at = int(expires)
    if now >= expires_at:
        raise InvalidTicket("expired")
    return TicketClaims(session_id, player_id, expires_at)
