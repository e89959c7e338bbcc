"""--auth jwt: identity from the game's backend, verified against a JWKS the test serves."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from lobby.auth import player_id_for

ISSUER = "https://auth.game.test/"
AUDIENCE = "lobby"


class Keys:
    """Signing keys made here, and the JWKS that publishes their public halves."""

    def __init__(self) -> None:
        self.private: dict[str, Any] = {}
        self.published: list[str] = []

    def add(self, kid: str, kind: str = "rsa") -> None:
        if kind == "rsa":
            self.private[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.private[kid] = ec.generate_private_key(ec.SECP256R1())
        self.published.append(kid)

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            key = self.private[kid]
            if isinstance(key, rsa.RSAPrivateKey):
                jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
                jwk["alg"] = "RS256"
            else:
                jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
                jwk["alg"] = "ES256"
            keys.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": keys}

    def token(self, kid: str = "rsa1", *, sub: str | None = None, **claims: Any) -> str:
        key = self.private[kid]
        alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        now = int(time.time())
        payload = {"sub": sub if sub is not None else f"user-{uuid.uuid4().hex[:12]}",
                   "iss": ISSUER,
                   "aud": AUDIENCE, "iat": now, "exp": now + 300, **claims}
        return jwt.encode({k: v for k, v in payload.items() if v is not None}, key,
                          algorithm=alg, headers={"kid": kid})

    def public_pem(self, kid: str) -> bytes:
        return self.private[kid].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class JwksServer:
    """A tiny HTTP server on a free port serving the keys' JWKS; counts fetches."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.keys.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def keys() -> Keys:
    k = Keys()
    k.add("rsa1", "rsa")
    k.add("ec1", "ec")
    return k


@pytest.fixture
def jwks(keys: Keys) -> Iterator[JwksServer]:
    keys.published = ["rsa1", "ec1"]
    server = JwksServer(keys)
    yield server
    server.close()


def jwt_settings(url: str, **overrides: Any) -> dict[str, Any]:
    return {"auth": "jwt", "jwt_jwks_url": url, "jwt_issuer": ISSUER,
            "jwt_audience": AUDIENCE, "jwt_leeway_seconds": 5.0, **overrides}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A token built by hand, as an attacker would (PyJWT refuses to make these)."""
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    sig = "" if secret is None else _b64(
        hmac.new(secret, head.encode(), hashlib.sha256).digest())
    return head + "." + sig


async def test_valid_rs256_and_es256_tokens(make_node, connect_player, keys: Keys,
                                            jwks: JwksServer) -> None:
    node = await make_node(**jwt_settings(jwks.url))
    for kid in ("rsa1", "ec1"):
        player = await connect_player(node, None)
        sub = f"steam-7656119{kid}"
        reply = await player.hello(token=keys.token(kid, sub=sub, name="Zoë"))
        assert reply["player_id"] == sub and reply["name"] == "Zoë"
        assert reply["resumed"] is False
        await player.ok("create_session")
    # A sub outside the player-id charset is mapped to a stable id.
    odd = await connect_player(node, None)
    reply = await odd.hello("odd", token=keys.token(sub="auth0|5f7c8ec7c33c6c004bbafe82"))
    assert reply["player_id"] == player_id_for("auth0|5f7c8ec7c33c6c004bbafe82")
    assert reply["player_id"].startswith("h_") and reply["name"] == "odd"
    # A name claim that is no valid name gives way to hello's name.
    bidi = await connect_player(node, None)
    reply = await bidi.hello("plain", token=keys.token(name="evil\u202eexe"))
    assert reply["name"] == "plain"
    assert jwks.fetches == 1  # at start-up, then from the cache


def _refused_cases(keys: Keys) -> list[tuple[str, str]]:
    now = int(time.time())
    claims = {"sub": "u1", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300}
    return [
        (keys.token(exp=now - 60), "expired"),
        (keys.token(nbf=now + 600), "not valid yet"),
        (keys.token(iss="https://evil.test/"), "wrong issuer"),
        (keys.token(aud="another-game"), "wrong audience"),
        (keys.token(exp=None), "missing claim 'exp'"),
        (keys.token(sub=""), "sub must be a non-empty string"),
        (jwt.encode(claims, keys.private["rsa1"], algorithm="RS256",
                    headers={"kid": "nobody"}), "unknown key id"),
        (forged({"alg": "none", "typ": "JWT"}, claims, None), "algorithm 'none'"),
        # The RSA public key used as an HMAC secret: the classic algorithm confusion.
        (forged({"alg": "HS256", "kid": "rsa1"}, claims, keys.public_pem("rsa1")),
         "algorithm 'HS256' is not accepted"),
        # Signed by the EC key but claiming the RSA key's kid.
        (jwt.encode(claims, keys.private["ec1"], algorithm="ES256", headers={"kid": "rsa1"}),
         "does not match"),
        (keys.token()[:-8] + "AAAAAAAA", "bad signature"),
        ("not.a.jwt", "malformed"),
    ]


async def test_bad_tokens_refused_with_clear_messages(make_node, connect_player, keys: Keys,
                                                      jwks: JwksServer) -> None:
    node = await make_node(**jwt_settings(jwks.url, jwt_jwks_min_refresh_seconds=3600))
    player = await connect_player(node, None)
    for token, why in _refused_cases(keys):
        reply = await player.error("hello", "NOT_AUTHENTICATED", token=token)
        assert why in reply["error"]["message"], (why, reply)
    reply = await player.error("hello", "NOT_AUTHENTICATED", name="alice")
    assert "needs a token" in reply["error"]["message"]
    # The socket is still good for a valid hello.
    assert (await player.hello(token=keys.token(sub="u-ok")))["player_id"] == "u-ok"


async def test_shared_secret_mode(make_node, connect_player, keys: Keys) -> None:
    node = await make_node(auth="jwt", jwt_secret="s3cret-of-the-backend-32-bytes-long!")
    now = int(time.time())
    good = jwt.encode({"sub": "p1", "exp": now + 60}, "s3cret-of-the-backend-32-bytes-long!",
                      algorithm="HS256")
    player = await connect_player(node, None)
    assert (await player.hello(token=good))["player_id"] == "p1"
    other = await connect_player(node, None)
    reply = await other.error("hello", "NOT_AUTHENTICATED", token=keys.token())
    assert "algorithm 'RS256' is not accepted" in reply["error"]["message"]
    wrong = jwt.encode({"sub": "p1", "exp": now + 60}, "guess-" * 6, algorithm="HS256")
    reply = await other.error("hello", "NOT_AUTHENTICATED", token=wrong)
    assert "bad signature" in reply["error"]["message"]


async def test_key_rotation_without_restart(make_node, connect_player, keys: Keys,
                                            jwks: JwksServer) -> None:
    node = await make_node(**jwt_settings(jwks.url, jwt_jwks_min_refresh_seconds=0))
    keys.add("rsa2", "rsa")
    keys.published = ["rsa2"]  # the backend rotated: rsa1 retired
    player = await connect_player(node, None)
    assert (await player.hello(token=keys.token("rsa2", sub="rotated")))["player_id"] \
        == "rotated"
    assert jwks.fetches == 2
    late = await connect_player(node, None)
    reply = await late.error("hello", "NOT_AUTHENTICATED", token=keys.token("rsa1"))
    assert "unknown key id" in reply["error"]["message"]


async def test_jwks_fetched_at_most_once_per_interval(make_node, keys: Keys,
                                                      jwks: JwksServer, connect_player) -> None:
    node = await make_node(**jwt_settings(jwks.url, max_sockets_per_ip=300))
    assert jwks.fetches == 1
    players = [await connect_player(node, None) for _ in range(200)]
    tokens = [keys.token("ec1" if i % 2 else "rsa1") if i % 4 else
              jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, keys.private["rsa1"],
                         algorithm="RS256", headers={"kid": f"made-up-{i}"})
              for i in range(200)]
    replies = await asyncio.gather(*(p.request("hello", token=t)
                                     for p, t in zip(players, tokens, strict=True)))
    made_up = [r for i, r in enumerate(replies) if i % 4 == 0]
    assert all(not r["ok"] and "unknown key id" in r["error"]["message"] for r in made_up)
    assert all(r["ok"] for i, r in enumerate(replies) if i % 4)
    assert jwks.fetches == 1  # 50 unknown kids within the 30 s interval: no fetch


async def test_same_sub_on_a_second_socket_takes_over(make_node, connect_player, keys: Keys,
                                                      jwks: JwksServer) -> None:
    node = await make_node(**jwt_settings(jwks.url))
    first = await connect_player(node, None)
    await first.hello(token=keys.token(sub="gamer-1", name="Gamer"))
    sid = (await first.ok("create_session", name="Mine"))["session"]["session_id"]
    second = await connect_player(node, None)
    reply = await second.hello(token=keys.token(sub="gamer-1", name="Gamer"))
    assert reply["player_id"] == "gamer-1" and reply["resumed"] is True
    assert reply["session"]["session_id"] == sid and reply["session"]["host_id"] == "gamer-1"
    async with asyncio.timeout(5):
        await first.ws.wait_closed()
    assert first.ws.close_code == 4001
    # The new socket is the player now: it gets the session's events, and its resume
    # token works without a JWT.
    guest = await connect_player(node, None)
    await guest.hello(token=keys.token(sub="guest-1"))
    await guest.ok("join_session", session_id=sid)
    assert (await second.event("player_joined"))["player_id"] == "guest-1"
    await second.close()
    third = await connect_player(node, None)
    resumed = await third.hello(resume_token=reply["resume_token"])
    assert resumed["player_id"] == "gamer-1" and resumed["session"]["session_id"] == sid


async def test_same_sub_on_two_nodes(make_node, connect_player, keys: Keys,
                                     jwks: JwksServer, redis_url: str) -> None:
    a = await make_node(redis_url=redis_url, **jwt_settings(jwks.url))
    b = await make_node(redis_url=redis_url, **jwt_settings(jwks.url))
    first = await connect_player(a, None)
    await first.hello(token=keys.token(sub="traveller"))
    sid = (await first.ok("create_session"))["session"]["session_id"]
    guest = await connect_player(a, None)
    await guest.hello(token=keys.token(sub="guest-2"))
    await guest.ok("join_session", session_id=sid)
    second = await connect_player(b, None)
    reply = await second.hello(token=keys.token(sub="traveller"))
    assert reply["resumed"] is True and reply["session"]["player_count"] == 2
    async with asyncio.timeout(5):
        await first.ws.wait_closed()
    assert first.ws.close_code == 4001
    await guest.ok("leave_session")
    left = await second.event("player_left")
    assert left["player_id"] == "guest-2" and left["session"]["host_id"] == "traveller"


async def test_auth_none_warns_and_ignores_tokens(make_node, connect_player, caplog) -> None:
    node = await make_node()
    assert any("AUTH NONE" in r.getMessage() for r in caplog.records)
    player = await connect_player(node, None)
    reply = await player.hello("anyone", token="whatever.it.is")
    assert reply["player_id"].startswith("p_")
