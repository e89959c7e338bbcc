"""Player identity from the game's backend: `hello {token}` with a signed JWT.

Game teams authenticate players in their own backend (Steam, EOS, consoles,
email) and hand the game a token; the lobby verifies it with PyJWT and takes
the player id from `sub`. Keys come from a shared secret (HS256), a PEM public
key, or a JWKS URL (Cognito, Auth0, ...). A JWKS is fetched in a thread (never
on the event loop), cached, refreshed every `jwks_refresh_seconds`, and fetched
again for a `kid` it does not know, but at most once per
`jwks_min_refresh_seconds`: tokens with made-up key ids cannot make the lobby
hammer the key server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWK, PyJWKSet
from jwt.exceptions import PyJWKError, PyJWKSetError

from lobby.config import Settings, StartupError
from lobby.errors import ErrorCode, LobbyError

log = logging.getLogger("lobby.auth")

ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
              "ES512", "EdDSA")
SYMMETRIC = ("HS256", "HS384", "HS512")
# What a `sub` must look like to be the player id as it is: the charset of the
# lobby's own ids (no '.', the separator of resume tokens and join tickets).
_PLAYER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAPPED_PREFIX = "h_"


def player_id_for(sub: str) -> str:
    """`sub` itself when it fits the player-id charset and length; otherwise a
    stable id derived from it (h_ + 22 characters of its SHA-256)."""
    if _PLAYER_ID.match(sub):
        return sub
    digest = hashlib.sha256(sub.encode("utf-8")).digest()
    return MAPPED_PREFIX + base64.urlsafe_b64encode(digest).decode()[:22]


def _refuse(why: str) -> LobbyError:
    return LobbyError(ErrorCode.NOT_AUTHENTICATED, f"token refused: {why}")


@dataclass(slots=True)
class _Jwks:
    keys: dict[str, PyJWK]
    fetched_at: float  # monotonic


class JwtVerifier:
    def __init__(self, settings: Settings) -> None:
        s = settings
        sources = [x for x in (s.jwt_secret, s.jwt_jwks_url, s.jwt_public_key_file) if x]
        if len(sources) != 1:
            raise StartupError(
                "--auth jwt needs exactly one of --jwt-secret, --jwt-jwks-url, "
                "--jwt-public-key-file", 2)
        self.issuer = s.jwt_issuer
        self.audience = s.jwt_audience
        self.leeway = s.jwt_leeway_seconds
        self.name_claim = s.jwt_name_claim
        self.jwks_url = s.jwt_jwks_url
        self.refresh_seconds = s.jwt_jwks_refresh_seconds
        self.min_refresh_seconds = s.jwt_jwks_min_refresh_seconds
        self._static_key: Any = None
        self.algorithms: tuple[str, ...]
        if s.jwt_secret:
            self._static_key = s.jwt_secret
            self.algorithms = SYMMETRIC
            if len(s.jwt_secret.encode()) < 32:
                log.warning("--jwt-secret is shorter than 32 bytes: HS256 keys should be "
                            "at least 32 random bytes (RFC 7518 3.2)")
        elif s.jwt_public_key_file:
            try:
                pem = Path(s.jwt_public_key_file).read_bytes()
                self._static_key = _load_public_key(pem)
            except (OSError, ValueError) as err:
                raise StartupError(f"--jwt-public-key-file: {err}", 2) from err
            self.algorithms = ASYMMETRIC
        else:
            self.algorithms = ASYMMETRIC
        self._jwks: _Jwks | None = None
        self._fetch: asyncio.Task[None] | None = None
        self._last_attempt = -1e18
        self.fetches = 0

    async def start(self) -> None:
        if self.jwks_url:
            try:
                await self._refresh()
            except Exception as err:  # the key server may come up later: retried on demand
                log.warning("JWKS %s not fetched at start-up: %s", self.jwks_url, err)

    # keys ----------------------------------------------------------------------
    async def _refresh(self) -> None:
        """One fetch at a time; concurrent callers wait for the same one."""
        if self._fetch is None or self._fetch.done():
            self._last_attempt = time.monotonic()
            self._fetch = asyncio.create_task(self._do_fetch())
        await asyncio.shield(self._fetch)

    async def _do_fetch(self) -> None:
        assert self.jwks_url is not None
        self.fetches += 1
        data = await asyncio.to_thread(_get_json, self.jwks_url)
        try:
            jwks = PyJWKSet.from_dict(data)
        except (PyJWKSetError, PyJWKError) as err:
            raise ValueError(f"not a usable JWKS: {err}") from err
        keys = {k.key_id or "": k for k in jwks.keys}
        self._jwks = _Jwks(keys, time.monotonic())
        log.info("JWKS %s: %d keys (%s)", self.jwks_url, len(keys), ", ".join(sorted(keys)))

    async def _key_for(self, kid: str | None) -> Any:
        if self._static_key is not None:
            return self._static_key
        now = time.monotonic()
        jwks = self._jwks
        stale = jwks is None or now - jwks.fetched_at >= self.refresh_seconds
        known = jwks is not None and (kid or "") in jwks.keys
        if stale or not known:
            # An unknown kid may be a rotation: look again, but not more than once
            # per min_refresh_seconds, whatever the tokens say.
            if now - self._last_attempt >= self.min_refresh_seconds or (
                    self._fetch is not None and not self._fetch.done()):
                try:
                    await self._refresh()
                except Exception as err:
                    log.warning("JWKS %s fetch failed: %s", self.jwks_url, err)
            jwks = self._jwks
        if jwks is None:
            raise _refuse("the signing keys are not available (JWKS fetch failed)")
        if kid is None and len(jwks.keys) == 1:
            return next(iter(jwks.keys.values()))
        key = jwks.keys.get(kid or "")
        if key is None:
            raise _refuse(f"unknown key id (kid {kid!r})")
        return key

    # tokens --------------------------------------------------------------------
    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or LobbyError(NOT_AUTHENTICATED) saying why not."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise _refuse("malformed token (not a JWT)") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise _refuse(f"algorithm {alg!r} is not accepted (this lobby takes "
                          f"{', '.join(self.algorithms)})")
        key = await self._key_for(header.get("kid"))
        required = ["exp", "sub"]
        if self.issuer:
            required.append("iss")
        if self.audience:
            required.append("aud")
        try:
            claims = jwt.decode(
                token, key, algorithms=list(self.algorithms), audience=self.audience,
                issuer=self.issuer, leeway=self.leeway,
                options={"require": required, "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise _refuse("expired (exp is in the past)") from None
        except jwt.ImmatureSignatureError:
            raise _refuse("not valid yet (nbf or iat is in the future)") from None
        except jwt.InvalidIssuerError:
            raise _refuse(f"wrong issuer (iss must be {self.issuer!r})") from None
        except jwt.InvalidAudienceError:
            raise _refuse(f"wrong audience (aud must include {self.audience!r})") from None
        except jwt.MissingRequiredClaimError as err:
            raise _refuse(f"missing claim {err.claim!r}") from None
        except jwt.InvalidSignatureError:
            raise _refuse("bad signature") from None
        except jwt.InvalidAlgorithmError:
            raise _refuse(f"algorithm {alg!r} does not match the signing key") from None
        except (jwt.InvalidTokenError, PyJWKError) as err:
            raise _refuse(f"invalid token ({err})") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _refuse("sub must be a non-empty string")
        return claims


def _load_public_key(pem: bytes) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    return load_pem_public_key(pem)


def _get_json(url: str) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json",
                                                   "User-Agent": "lobby"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.loads(resp.read(1 << 20))
