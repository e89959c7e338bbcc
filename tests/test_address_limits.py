"""Per-address limits: sockets per client address, handshakes in flight, frames
charged before parsing, and a node that survives a flood of half-open
connections at its open-file limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from lobby.addresses import AddressLedger, client_address, parse_proxies
from lobby.store.memory import MemoryStore
from tests.conftest import Player, free_port, stop_process, ws_url
from tests.faults import (
    closed_by_server,
    half_open,
    node_procs,  # noqa: F401  (fixture)
)

# Asyncio's loop in this process; the tests that start `lobby serve` processes here
# (node_procs) run them on uvloop, the default of --event-loop.


def test_client_address_from_forwarded_for() -> None:
    lb = parse_proxies("10.0.0.0/8, 127.0.0.1")
    # Not from a trusted proxy: the header is the client's word, ignored.
    assert client_address("198.51.100.9", "203.0.113.7", lb) == "198.51.100.9"
    assert client_address("10.1.2.3", None, lb) == "10.1.2.3"
    assert client_address("10.1.2.3", "203.0.113.7", lb) == "203.0.113.7"
    # The first untrusted hop from the right: what the client wrote itself is left of it.
    assert client_address("10.1.2.3", "1.1.1.1, 203.0.113.7, 10.9.9.9", lb) == "203.0.113.7"
    assert client_address("10.1.2.3", "10.0.0.5", lb) == "10.0.0.5"
    assert client_address("10.1.2.3", "not-an-ip", lb) == "10.1.2.3"
    assert client_address("127.0.0.1", "2001:db8::1", lb) == "2001:db8::1"
    assert client_address("10.1.2.3", "203.0.113.7", ()) == "10.1.2.3"


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Until the node's counters (read in this process) say so: they change on
    socket events that have no notification of their own."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def _until_store(count: Callable[[], Any], want: int, timeout: float) -> float:
    """Seconds until the store counts `want` (polled: a release on another node or
    a dead node's sweep has no notification of its own)."""
    started = time.monotonic()
    while (got := await count()) != want:
        assert time.monotonic() - started < timeout, f"store counts {got}, not {want}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _refused(url: str, source: str) -> bytes:
    with pytest.raises(InvalidStatus) as refused:
        await _open(url, source)
    assert refused.value.response.status_code == 429
    return refused.value.response.body


async def _open(url: str, source: str, **kw: Any) -> Any:
    return await connect(url, compression=None, local_addr=(source, 0), open_timeout=10,
                         **kw)


async def test_sockets_per_address_capped_others_unaffected(make_node) -> None:
    node = await make_node(max_sockets_per_ip=32, max_handshakes_per_ip=16,
                           max_handshakes=128)  # the defaults
    url = ws_url(node)
    # 1,000 sockets from one address, 16 handshakes at a time.
    gate = asyncio.Semaphore(16)

    async def one() -> Any:
        async with gate:
            return await _open(url, "127.0.0.1")

    results = await asyncio.gather(*(one() for _ in range(1000)), return_exceptions=True)
    opened = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    # And 300 at once from another: past 16 in flight, refused at once as well.
    burst = await asyncio.gather(*(_open(url, "127.0.0.10") for _ in range(300)),
                                 return_exceptions=True)
    opened += [r for r in burst if not isinstance(r, BaseException)]
    burst_refused = [r for r in burst if isinstance(r, BaseException)]
    try:
        assert len(opened) == 32 + (300 - len(burst_refused))
        assert 16 <= 300 - len(burst_refused) <= 32
        # A clean refusal: an HTTP answer naming the limit, not a reset or a hang.
        for r in refused + burst_refused:
            assert isinstance(r, InvalidStatus) and r.response.status_code == 429, repr(r)
        assert all(b"--max-sockets-per-ip" in r.response.body for r in refused)
        assert any(b"--max-handshakes-per-ip" in r.response.body for r in burst_refused)
        assert node.gate.sockets_of("127.0.0.1") == 32
        counted = node.metrics()["connections"]
        assert counted["refused_per_ip"] >= len(refused)
        assert counted["refused_per_ip"] + counted["refused_handshakes"] \
            == len(refused) + len(burst_refused)
        # Players from other addresses are unaffected: each connects and plays.
        players = [Player(await _open(url, f"127.0.0.{i}")) for i in range(2, 10)]
        for i, player in enumerate(players):
            await player.hello(f"p{i}")
        sid = (await players[0].ok("create_session", max_players=8))["session"]["session_id"]
        for player in players[1:]:
            await player.ok("join_session", session_id=sid)
        started = await players[0].ok("start_session")
        assert started["session"]["player_count"] == 8
        # The capped sockets still work too, and a closed one frees its slot.
        first = Player(opened[0])
        await first.hello("one-of-32")
        await first.ok("ping")
        await first.close()
        opened.pop(0)
        await _until(lambda: node.gate.sockets_of("127.0.0.1") < 32)
        again = await _open(url, "127.0.0.1")
        opened.append(again)
        for player in players:
            await player.close()
    finally:
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)


async def test_sockets_per_address_capped_across_nodes(make_node, redis_url) -> None:
    # A load balancer spreads one address over two nodes: the cap is the lobby's.
    n1, n2 = [await make_node(redis_url=redis_url, max_sockets_per_ip=4) for _ in range(2)]
    opened = [await _open(ws_url(n), "127.0.0.1") for n in (n1, n2, n1, n2)]
    others: list[Player] = []
    try:
        for n in (n1, n2):
            assert b"across the lobby (--max-sockets-per-ip)" in \
                await _refused(ws_url(n), "127.0.0.1")
        assert n1.gate.sockets_of("127.0.0.1") == 2 == n2.gate.sockets_of("127.0.0.1")
        assert await n1.store.address_count("127.0.0.1") == 4
        assert n1.metrics()["connections"]["refused_per_ip_lobby"] == 1
        # Other addresses, on either node, are unaffected.
        for i, n in ((2, n1), (2, n2), (3, n2)):
            player = Player(await _open(ws_url(n), f"127.0.0.{i}"))
            others.append(player)
            await player.hello(f"other{i}")
            await player.ok("ping")
        # A socket closed on one node frees a place on the other.
        await opened.pop(0).close()
        await _until_store(lambda: n2.store.address_count("127.0.0.1"), 3, 5)
        opened.append(await _open(ws_url(n2), "127.0.0.1"))
        await _refused(ws_url(n1), "127.0.0.1")
        assert n2.gate.sockets_of("127.0.0.1") == 3
    finally:
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
        for player in others:
            await player.close()
    await _until_store(lambda: n1.store.address_count("127.0.0.1"), 0, 5)


async def test_a_sigkilled_node_stops_counting_against_its_addresses(
        make_node, redis_url, node_procs) -> None:  # noqa: F811
    doomed = await node_procs(redis_url=redis_url, extra=[
        "--max-sockets-per-ip", "3", "--node-timeout-seconds", "1"])
    survivor = await make_node(redis_url=redis_url, max_sockets_per_ip=3,
                               node_timeout_seconds=1.0)
    held = [await _open(doomed.url, "127.0.0.7") for _ in range(3)]
    assert b"across the lobby" in await _refused(ws_url(survivor), "127.0.0.7")
    doomed.kill()
    # Nothing told the store: the counts go with the dead node's heartbeat
    # (1 s) at the survivor's next address sweep (every 0.2 s).
    took = await _until_store(lambda: survivor.store.address_count("127.0.0.7"), 0, 10)
    print(f"a SIGKILLed node's 3 sockets stopped counting {took:.2f}s after the kill")
    again = [await _open(ws_url(survivor), "127.0.0.7") for _ in range(3)]
    try:
        await _refused(ws_url(survivor), "127.0.0.7")
    finally:
        for ws in held + again:
            ws.transport.abort()


class FlakyStore(MemoryStore):
    """A memory store whose address batches fail while `down` is set."""

    down = False

    async def address_apply(self, *args: Any) -> list[bool]:
        if self.down:
            raise ConnectionError("store unreachable")
        return await super().address_apply(*args)


async def test_ledger_writes_its_counts_again_after_a_lapse_or_a_failure() -> None:
    store = FlakyStore(lambda channel, message: None)
    # A heartbeat that lapses long before the next beat: as a node paused (or cut
    # off from the store) past --node-timeout-seconds.
    ledger = AddressLedger(store, "n1", 3, lapse_ms=50, beat_seconds=3600)
    other = AddressLedger(store, "n2", 3, lapse_ms=60_000, beat_seconds=3600)
    await ledger.start()
    await other.start()
    try:
        assert [await ledger.acquire("10.0.0.1") for _ in range(2)] == [True, True]
        first = ledger.incarnation
        await asyncio.sleep(0.06)
        # The other node's sweep drops the lapsed counts: the address is free.
        assert await store.address_sweep(int(time.time() * 1000)) == 1
        assert await store.address_count("10.0.0.1") == 0
        # The paused node's next beat finds its heartbeat gone, and it writes its
        # two sockets again under a new incarnation.
        await ledger._beat()
        assert ledger.incarnation != first
        assert await store.address_count("10.0.0.1") == 2
        assert await other.acquire("10.0.0.1") is True
        assert await other.acquire("10.0.0.1") is False
        # The store fails: sockets are admitted (each node's own cap still holds)
        # and counted here; once it answers they are written again.
        store.down = True
        assert await other.acquire("10.0.0.2") is True
        assert other.stats["store_failures"] == 1
        store.down = False
        before = other.incarnation
        await other._beat()
        assert other.incarnation != before
        assert await store.address_count("10.0.0.2") == 1
        assert await store.address_count("10.0.0.1") == 3
        ledger.release("10.0.0.1")
        await _until_store(lambda: store.address_count("10.0.0.1"), 2, 5)
        assert await other.acquire("10.0.0.1") is True
    finally:
        await ledger.close()
        await other.close()
    assert await store.address_count("10.0.0.1") == 0
    assert await store.address_count("10.0.0.2") == 0


async def test_forwarded_for_counts_the_client_behind_a_trusted_proxy(make_node) -> None:
    node = await make_node(max_sockets_per_ip=3, trusted_proxy="127.0.0.1/32")
    url = ws_url(node)
    behind = [await _open(url, "127.0.0.1", additional_headers={"X-Forwarded-For": "203.0.113.7"})
              for _ in range(3)]
    with pytest.raises(InvalidStatus) as refused:
        await _open(url, "127.0.0.1", additional_headers={"X-Forwarded-For": "203.0.113.7"})
    assert refused.value.response.status_code == 429
    # Another client behind the same balancer has its own count.
    other = await _open(url, "127.0.0.1", additional_headers={"X-Forwarded-For": "203.0.113.8"})
    # An untrusted peer cannot pick its address with the header.
    spoofers = [await _open(url, "127.0.0.3", additional_headers={"X-Forwarded-For": f"9.9.9.{i}"})
                for i in range(3)]
    with pytest.raises(InvalidStatus):
        await _open(url, "127.0.0.3", additional_headers={"X-Forwarded-For": "9.9.9.99"})
    assert node.gate.sockets_of("203.0.113.7") == 3 and node.gate.sockets_of("127.0.0.3") == 3
    for ws in [*behind, other, *spoofers]:
        await ws.close()


async def test_handshakes_in_flight_capped_per_address_and_timed_out(make_node) -> None:
    node = await make_node(max_handshakes_per_ip=8, handshake_timeout_seconds=3.0)
    links = [await half_open(node.port, "127.0.0.5") for _ in range(20)]
    # Past the 8 in flight from that address, connections are dropped after 1 s
    # (REFUSE_SECONDS: a request arriving meanwhile would get its 429).
    closed = await asyncio.gather(*(closed_by_server(r, 2.0) for r, _ in links))
    assert closed.count(True) == 12, closed
    assert node.gate.handshakes == 8
    # Meanwhile another address connects and plays.
    player = Player(await _open(ws_url(node), "127.0.0.6"))
    await player.hello("real")
    await player.ok("create_session")
    # The 8 that never sent a request are dropped after the handshake timeout.
    kept = [r for (r, _), c in zip(links, closed, strict=True) if not c]
    assert all(await asyncio.gather(*(closed_by_server(r, 5) for r in kept)))
    await _until(lambda: node.gate.handshakes == 0)
    assert node.gate.connections == 1  # the player's
    for _, writer in links:
        writer.close()
    await player.close()


async def test_frames_charged_by_size_before_parsing_and_floods_closed(make_node) -> None:
    node = await make_node(rate_limit_per_second=1.0, rate_limit_burst=40)
    player = Player(await connect(ws_url(node), compression=None))
    big = json.dumps({"type": "ping", "id": 1, "pad": "x" * 60_000})  # costs 15 tokens
    for _ in range(2):
        await player.ws.send(big)
        assert (await asyncio.wait_for(player.orphans.get(), 5))["error"]["code"] \
            == "NOT_AUTHENTICATED"
    await player.ws.send(big)  # 10 tokens left: refused unparsed, type unknown
    refused = await asyncio.wait_for(player.orphans.get(), 5)
    assert refused["error"]["code"] == "RATE_LIMITED"
    assert (refused["type"], refused["id"]) == ("error", None)
    # A small frame still gets its own type and id back.
    reply = await player.request("hello", name="x")
    assert reply["ok"] is True
    # Sending on and on while refused: the socket is closed with 1008.
    with contextlib.suppress(ConnectionClosed):
        for _ in range(200):
            await player.ws.send(big)
    async with asyncio.timeout(5):
        await player.ws.wait_closed()
    assert player.ws.close_code == 1008


# 2,000 half-open connections at a node whose open-file limit is 512 ---------------
def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))


async def test_half_open_flood_at_the_open_file_limit(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    log_path = tmp_path / "node.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: ASYNC220 (started once, not waited on)
            [sys.executable, "-m", "lobby.cli", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--handshake-timeout-seconds", "2"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, preexec_fn=_low_nofile,
            cwd=Path(__file__).resolve().parent.parent,
        )
    try:
        url = f"ws://127.0.0.1:{port}/ws"
        async with asyncio.timeout(20):
            while True:
                try:
                    (await connect(url)).transport.abort()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
        flood: list[asyncio.StreamWriter] = []
        stop = asyncio.Event()

        async def flooder(source: str, count: int) -> None:
            # Keeps `count` connections open from one address, re-opening each
            # one the node drops, until the players are done.
            async def one() -> None:
                while not stop.is_set():
                    try:
                        reader, writer = await half_open(port, source)
                    except OSError:
                        await asyncio.sleep(0.05)
                        continue
                    flood.append(writer)
                    with contextlib.suppress(OSError):
                        await reader.read(1)
                    writer.close()
                    await asyncio.sleep(0.5)
            await asyncio.gather(*(one() for _ in range(count)))

        flooders = [asyncio.create_task(flooder(f"127.0.1.{i}", 100)) for i in range(1, 21)]
        await _until(lambda: len(flood) >= 2000, 20)
        # Real players from their own addresses, during the flood: they connect,
        # meet in a session and start it.
        started = time.monotonic()
        players = []
        retries = 0
        for i in range(2, 6):
            for attempt in range(20):  # a player's client retries a failed connect
                try:
                    players.append(Player(await connect(
                        url, local_addr=(f"127.0.0.{i}", 0), open_timeout=5)))
                    break
                except (OSError, InvalidHandshake, TimeoutError):
                    # Refused (429, or dropped past the node's budget): try again.
                    if attempt == 19:
                        raise
                    retries += 1
                    await asyncio.sleep(0.1)
        connected = time.monotonic() - started
        for i, player in enumerate(players):
            await player.hello(f"real{i}")
        hellos = time.monotonic() - started
        sid = (await players[0].ok("create_session"))["session"]["session_id"]
        for player in players[1:]:
            await player.ok("join_session", session_id=sid)
        assert (await players[0].ok("start_session"))["session"]["player_count"] == 4
        took = time.monotonic() - started
        stop.set()
        for task in flooders:
            task.cancel()
        for writer in flood:
            writer.close()
        for player in players:
            await player.close()
        assert took < 15, took
        print(f"players connected in {connected:.2f}s, said hello by {hellos:.2f}s, played "
              f"by {took:.2f}s, {retries} retries; {len(flood)} flood connects")
        assert proc.poll() is None, "the node died"
    finally:
        stop_process(proc)
    size = log_path.stat().st_size
    text = log_path.read_text(errors="replace")
    assert size < 1_000_000, (size, text[-2000:])
    assert "Traceback" not in text, text[-3000:]
