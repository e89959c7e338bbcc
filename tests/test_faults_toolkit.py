"""The fault toolkit itself: the proxy really cuts, refuses, stalls and restores,
and a node subprocess really dies on SIGKILL."""

from __future__ import annotations

import asyncio
import socket

import pytest
import redis.asyncio as aioredis

from tests.conftest import RedisServer
from tests.faults import node_procs, private_redis, tcp_proxy  # noqa: F401  (fixtures)


def _ping(port: int, timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16)


def test_proxy_forwards_cuts_refuses_stalls_restores(
    redis_server: RedisServer, tcp_proxy  # noqa: F811
) -> None:
    proxy = tcp_proxy(redis_server.port)
    assert _ping(proxy.port) == b"+PONG\r\n"

    # cut: an open link is reset on both sides; new links still pass.
    held = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    held.sendall(b"PING\r\n")
    assert held.recv(16) == b"+PONG\r\n"
    assert proxy.cut() == 1
    with pytest.raises(ConnectionResetError):
        held.sendall(b"PING\r\n")
        if not held.recv(16):  # a FIN instead of a RST would end here
            raise AssertionError("closed with FIN, not reset")
    held.close()
    assert _ping(proxy.port) == b"+PONG\r\n"

    # refuse: accepted and reset at once, nothing reaches the target.
    proxy.refuse()
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        if not _ping(proxy.port):
            raise ConnectionResetError("closed")
    proxy.restore()
    assert _ping(proxy.port) == b"+PONG\r\n"

    # stall: the link is up and silent; after restore the held bytes go through.
    stalled = socket.create_connection(("127.0.0.1", proxy.port), timeout=0.3)
    proxy.stall()
    stalled.sendall(b"PING\r\n")
    with pytest.raises(TimeoutError):
        stalled.recv(16)
    proxy.restore()
    stalled.settimeout(5)
    assert stalled.recv(16) == b"+PONG\r\n"
    stalled.close()


async def test_redis_client_through_a_cut_link(
    private_redis: RedisServer, tcp_proxy  # noqa: F811
) -> None:
    proxy = tcp_proxy(private_redis.port)
    client = aioredis.from_url(proxy.url(), socket_timeout=2)
    try:
        assert await client.ping() is True
        proxy.down()
        with pytest.raises(Exception):  # noqa: B017  (redis-py's ConnectionError family)
            await client.ping()
        proxy.restore()
        assert await client.ping() is True  # a fresh connection through the proxy
        assert proxy.forwarded >= 2
    finally:
        await client.aclose()


async def test_node_subprocess_sigkill(
    redis_url: str, node_procs, connect_player  # noqa: F811
) -> None:
    proc = await node_procs(redis_url=redis_url)
    player = await connect_player(proc, "p")
    await player.ok("create_session")
    proc.kill()
    assert not proc.alive() and proc.proc.returncode == -9
    await asyncio.wait_for(player.ws.wait_closed(), 5)  # the OS reset its sockets
    assert player.ws.close_code == 1006
