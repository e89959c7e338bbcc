"""A token bucket: `rate` tokens a second, at most `burst` saved up.

Standard library only: lobby.fleetiq_local (GameLift's claim limit: refused past
it) and the FleetIQ allocator (its claims paced under that limit) share it.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self, now: float) -> bool:
        """A token now, or False (and nothing taken)."""
        self._refill(now)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def reserve(self, now: float) -> float:
        """The next token, whenever it comes: the seconds to wait before using it.
        Reservations are served in the order they were made."""
        self._refill(now)
        self._tokens -= 1
        return max(0.0, -self._tokens / self.rate)
