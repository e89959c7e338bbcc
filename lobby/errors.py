"""Error codes of the wire protocol and the exception that carries them.

Kept free of pydantic and websockets so every layer (stores, allocators,
handlers) can raise a protocol error without importing the socket layer.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    BAD_REQUEST = "BAD_REQUEST"
    NOT_AUTHENTICATED = "NOT_AUTHENTICATED"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    SESSION_FULL = "SESSION_FULL"
    SESSION_NOT_WAITING = "SESSION_NOT_WAITING"
    WRONG_PASSWORD = "WRONG_PASSWORD"
    ALREADY_IN_SESSION = "ALREADY_IN_SESSION"
    NOT_IN_SESSION = "NOT_IN_SESSION"
    NOT_HOST = "NOT_HOST"
    NO_SERVER_AVAILABLE = "NO_SERVER_AVAILABLE"
    SESSION_NOT_STARTED = "SESSION_NOT_STARTED"
    TICKETS_DISABLED = "TICKETS_DISABLED"
    RATE_LIMITED = "RATE_LIMITED"
    SESSION_LOCKED = "SESSION_LOCKED"
    BANNED = "BANNED"
    NOT_READY = "NOT_READY"
    NOT_ENOUGH_PLAYERS = "NOT_ENOUGH_PLAYERS"
    INTERNAL = "INTERNAL"


class LobbyError(Exception):
    """A rule was broken; becomes an `ok: false` reply with this code."""

    def __init__(self, code: ErrorCode | str, message: str = "") -> None:
        self.code = ErrorCode(code)
        self.message = message or self.code.value.replace("_", " ").lower()
        super().__init__(f"{self.code}: {self.message}")
