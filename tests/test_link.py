"""lobby/store/link.py: the store's multiplexed Redis connection, against a real
redis-server, and through a TCP proxy the test cuts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from lobby import redisconn
from lobby.redisconn import RedisTarget
from lobby.store.link import Link
from tests.conftest import RedisServer
from tests.faults import TcpProxy, tcp_proxy  # noqa: F401  (fixture)


def link_for(url: str) -> Link:
    link = redisconn.link(RedisTarget("single", "--redis-url", url=url), "lobby-test")
    assert link is not None
    return link


async def test_concurrent_calls_get_their_own_replies_in_order(redis_url: str) -> None:
    link = link_for(redis_url)
    try:
        # Written in the order they were called, answered in that order.
        replies = await asyncio.gather(*(link.call("INCR", "n") for _ in range(2000)))
        assert replies == list(range(1, 2001))
        assert await link.batch([("SET", "a", "x"), ("APPEND", "a", "y"), ("GET", "a")]) == [
            b"OK", 2, b"xy"]
        # Batches (one future each) and single calls of the same loop turn share a
        # write; each gets its own replies, a batch of one a list of one.
        got = await asyncio.gather(
            link.call("INCR", "m"), link.batch([("INCR", "m"), ("INCR", "m")]),
            link.batch([("INCR", "m")]), link.batch([]), link.call("INCR", "m"))
        assert got == [1, [2, 3], [4], [], 5]
    finally:
        await link.close()


async def test_error_replies_are_redis_py_exceptions_and_the_link_goes_on(
    redis_url: str,
) -> None:
    link = link_for(redis_url)
    try:
        with pytest.raises(NoScriptError):
            await link.call("EVALSHA", "0" * 40, 0)
        await link.call("SET", "s", "text")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await link.call("LPUSH", "s", "x")
        with pytest.raises(ResponseError):  # the first error of a batch, after it ran
            await link.batch([("SET", "b", "1"), ("INCR", "s"), ("SET", "c", "2")])
        assert await link.call("MGET", "b", "c") == [b"1", b"2"]
        assert await link.call("EVAL", "return {1, 'two', false}", 0) == [1, b"two", None]
    finally:
        await link.close()


async def test_database_and_client_name_from_the_url(redis_server: RedisServer) -> None:
    client = aioredis.from_url(redis_server.url)
    await client.flushall()
    link = link_for(redis_server.url.rsplit("/", 1)[0] + "/3")
    try:
        await link.call("SET", "where", "db3")
        names = [c["name"] for c in await client.client_list()]
        assert "lobby-test" in names
        assert await client.get("where") is None
        db3 = aioredis.from_url(redis_server.url.rsplit("/", 1)[0] + "/3")
        assert await db3.get("where") == b"db3"
        await db3.aclose()
    finally:
        await link.close()
        await client.aclose()


async def test_a_cut_link_is_made_again_and_calls_go_on(
    redis_server: RedisServer, tcp_proxy: Callable[..., TcpProxy],  # noqa: F811
) -> None:
    proxy = tcp_proxy(redis_server.port)
    link = link_for(proxy.url())
    direct = aioredis.from_url(redis_server.url)

    try:
        assert await link.call("PING") == b"PONG"
        async with direct.monitor() as monitor:

            async def received(command: str) -> None:  # Redis' MONITOR feed shows it
                async with asyncio.timeout(10):
                    while not (await monitor.next_command())["command"].startswith(command):
                        pass

            # Cut while a call waits for its reply: it is sent again on a new connection.
            waiting = asyncio.ensure_future(link.call("BLPOP", "q", 10))
            await received("BLPOP")
            assert await asyncio.to_thread(proxy.cut) == 1
            await received("BLPOP")  # again, on a new connection
            assert proxy.forwarded == 2
            await direct.lpush("q", "v")
            assert await waiting == [b"q", b"v"]

        # Refused for longer than the retries last: the call fails with redis-py's
        # ConnectionError (which the callers handle), and works again once restored.
        await asyncio.to_thread(proxy.down)
        with pytest.raises(RedisConnectionError):
            await link.call("PING")
        await asyncio.to_thread(proxy.restore)
        assert await link.call("PING") == b"PONG"
    finally:
        await link.close()
        await direct.aclose()
