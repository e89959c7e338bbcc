"""Session passwords: salted scrypt hashes, compared in constant time.

scrypt is deliberately slow (tens of ms), so callers run these in a thread.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from lobby.session import PasswordHash

# RFC 7914's interactive-login parameters: ~16 MiB and tens of ms per hash.
_N, _R, _P, _DKLEN = 2**14, 8, 1, 32


def _derive(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN,
        maxmem=64 * 1024 * 1024,
    )


def hash_password(password: str) -> PasswordHash:
    salt = os.urandom(16)
    return {"salt": salt.hex(), "hash": _derive(password, salt).hex()}


def verify_password(password: str, pw: PasswordHash) -> bool:
    candidate = _derive(password, bytes.fromhex(pw["salt"]))
    return hmac.compare_digest(candidate, bytes.fromhex(pw["hash"]))
