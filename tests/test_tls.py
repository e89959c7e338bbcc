"""--tls-cert/--tls-key: wss:// and https:// served directly, with a certificate made here."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect

from lobby.config import StartupError
from tests.conftest import Player
from tests.faults import closed_by_server, half_open
from tests.test_address_limits import _until

# asyncio's loop only: a node with --tls-cert runs on it (lobby.cli.event_loop_for).


def make_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lobby test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


async def test_wss_lifecycle(make_node, tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    node = await make_node(tls_cert=str(cert), tls_key=str(key))
    trust = ssl.create_default_context(cafile=str(cert))
    url = f"wss://127.0.0.1:{node.port}/ws"
    host = Player(await connect(url, ssl=trust, compression=None))
    guest = Player(await connect(url, ssl=trust, compression=None))
    await host.hello("host")
    await guest.hello("guest")
    sid = (await host.ok("create_session", password="tls"))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid, password="tls")
    assert (await host.event("player_joined"))["player_id"] == guest.player_id
    await host.ok("start_session")
    started = await guest.event("session_started")
    assert started["server_endpoint"] == "127.0.0.1:6060"
    await guest.ok("leave_session")
    assert (await host.event("player_left"))["player_id"] == guest.player_id
    # A resume over TLS too.
    await guest.close()
    again = Player(await connect(url, ssl=trust, compression=None))
    assert (await again.hello(resume_token=guest.resume_token))["resumed"] is True
    # HTTP on the same port is HTTPS.
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port, ssl=trust)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: lobby\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok\n")
    writer.close()
    # A client that does not trust the certificate is refused by its own TLS.
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect(url, ssl=ssl.create_default_context())
    # Plain ws:// to a TLS port gets nowhere.
    with pytest.raises(Exception):  # noqa: B017 (whichever way the handshake fails)
        await connect(f"ws://127.0.0.1:{node.port}/ws", open_timeout=5)
    for player in (host, again):
        await player.close()


async def test_tls_handshakes_are_counted_from_the_tcp_accept(make_node, tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    node = await make_node(tls_cert=str(cert), tls_key=str(key), max_handshakes_per_ip=8,
                           handshake_timeout_seconds=3.0)
    # 20 connections from one address that never finish TLS: half never send a
    # byte, half only the first bytes of a ClientHello.
    links = [await half_open(node.port, "127.0.0.5") for _ in range(20)]
    for _, writer in links[::2]:
        writer.write(b"\x16\x03\x01\x02\x00\x01")
    # Past the 8 in flight from that address they are refused (dropped after 1 s).
    closed = await asyncio.gather(*(closed_by_server(r, 2.0) for r, _ in links))
    assert closed.count(True) == 12, closed
    assert node.gate.handshakes == 8
    # Meanwhile a player from another address connects over TLS and plays.
    trust = ssl.create_default_context(cafile=str(cert))
    player = Player(await connect(f"wss://127.0.0.1:{node.port}/ws", ssl=trust,
                                  compression=None, local_addr=("127.0.0.6", 0)))
    await player.hello("real")
    await player.ok("create_session")
    # The 8 held are dropped at the TLS handshake timeout.
    kept = [r for (r, _), c in zip(links, closed, strict=True) if not c]
    assert all(await asyncio.gather(*(closed_by_server(r, 5) for r in kept)))
    await _until(lambda: node.gate.handshakes == 0)
    assert node.gate.connections == 1  # the player's
    for _, writer in links:
        writer.close()
    await player.close()
    await _until(lambda: node.gate.connections == 0)


async def test_tls_flags_checked_at_start(make_node, tmp_path: Path) -> None:
    cert, _ = make_certificate(tmp_path)
    with pytest.raises(StartupError, match="go together"):
        await make_node(tls_cert=str(cert))
    with pytest.raises(StartupError, match="--tls-cert/--tls-key"):
        await make_node(tls_cert=str(cert), tls_key=str(tmp_path / "missing.pem"))


def test_a_tls_node_runs_on_asyncios_loop(tmp_path: Path) -> None:
    from lobby.cli import event_loop_for
    from tests.conftest import test_settings

    cert, key = make_certificate(tmp_path)
    assert event_loop_for(test_settings()) == "uvloop"
    assert event_loop_for(test_settings(tls_cert=str(cert), tls_key=str(key))) == "asyncio"
    assert event_loop_for(test_settings(event_loop="asyncio")) == "asyncio"
