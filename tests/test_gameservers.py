"""Issue 3 end to end: FleetIQ claims, DynamoDB persistence, callbacks, recovery, timeouts.

Every AWS call goes through the real boto3 client over HTTP: DynamoDB to moto's
server mode, GameLift to the project's own local FleetIQ endpoint.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

from lobby.allocators.base import NoServerAvailable
from lobby.aws import make_client
from lobby.persistence.dynamodb import SessionTable
from tests.aws_fixtures import moto_endpoint  # noqa: F401  (fixture)
from tests.conftest import RedisServer, http_request
from tests.fleetiq_fixtures import FleetIQProcess, register_servers, run_fleetiq_local
from tests.test_cluster import bus_restored, redis_bus

KEY = "test-server-key"
_tables = itertools.count()


@pytest.fixture(scope="module")
def fleetiq() -> Iterator[FleetIQProcess]:
    with run_fleetiq_local(claim_ttl_seconds=60.0) as server:
        yield server


@pytest.fixture
def table_name() -> str:
    return f"sessions-{os.getpid()}-{next(_tables)}"


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def item(moto: str, table: str, sid: str) -> dict[str, Any] | None:
    return await asyncio.to_thread(SessionTable(table, endpoint_url=moto).get, sid)


async def test_dynamodb_items_follow_the_lifecycle(
    make_node, redis_url, moto_endpoint: str, table_name: str, connect_player  # noqa: F811
) -> None:
    node = await make_node(redis_url=redis_url, dynamodb=True, dynamodb_table=table_name,
                           dynamodb_endpoint_url=moto_endpoint, server_key=KEY)
    assert node.persistence is not None
    host = await connect_player(node, "host")
    guest = await connect_player(node, "guest")
    sid = (await host.ok("create_session", name="persisted", max_players=4))["session"][
        "session_id"]
    await node.persistence.flush(10)
    it = await item(moto_endpoint, table_name, sid)
    assert it is not None
    assert it["session_state"] == "WAITING" and it["host_id"] == host.player_id
    assert it["player_count"] == 1 and it["max_players"] == 4 and it["name"] == "persisted"
    assert it["connected_players"] == [host.player_id]
    assert it["server_id"] is None and it["server_endpoint"] is None
    assert it["expires_at"] > it["updated_at"] >= it["created_at"]

    await guest.ok("join_session", session_id=sid)
    await node.persistence.flush(10)
    it = await item(moto_endpoint, table_name, sid)
    assert it["player_count"] == 2
    assert it["connected_players"] == [host.player_id, guest.player_id]

    await host.ok("start_session")
    await node.persistence.flush(10)
    it = await item(moto_endpoint, table_name, sid)
    assert it["session_state"] == "CONNECTING"
    assert it["server_id"] == "static" and it["server_endpoint"] == "127.0.0.1:6060"

    status, _ = await http_request(node.port, "POST", f"/v1/sessions/{sid}/in-progress", auth())
    assert status == 200
    assert (await guest.event("session_in_progress"))["session"]["session_state"] == "IN_PROGRESS"
    await node.persistence.flush(10)
    assert (await item(moto_endpoint, table_name, sid))["session_state"] == "IN_PROGRESS"

    status, _ = await http_request(node.port, "POST", f"/v1/sessions/{sid}/complete", auth())
    assert status == 200
    for p in (host, guest):
        closed = await p.event("session_closed")
        assert closed == {"type": "session_closed", "session_id": sid, "reason": "completed"}
    await node.persistence.flush(10)
    it = await item(moto_endpoint, table_name, sid)
    assert it["session_state"] == "ENDED" and it["end_reason"] == "completed"
    # Gone from Redis: the members are free again.
    await host.error("leave_session", "NOT_IN_SESSION")
    await guest.ok("create_session")
    ttl = await asyncio.to_thread(
        make_client("dynamodb", endpoint_url=moto_endpoint).describe_time_to_live,
        TableName=table_name)
    assert ttl["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"


async def test_fleetiq_claims_and_no_capacity(make_node, redis_url, fleetiq: FleetIQProcess,
                                              connect_player) -> None:
    group = f"lobby-{os.getpid()}-{next(_tables)}"
    gamelift = make_client("gamelift", endpoint_url=fleetiq.url)
    register_servers(gamelift, group, 1)  # exactly one server: 10.0.0.0:6060
    node = await make_node(redis_url=redis_url, fleetiq_group=group,
                           aws_endpoint_url=fleetiq.url)
    host = await connect_player(node, "host")
    guest = await connect_player(node, "guest")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid)
    started = await host.ok("start_session")
    assert started["session"]["server_id"] == "gs-0000"
    for p in (host, guest):
        ev = await p.event("session_started")
        assert ev["server_endpoint"] == "10.0.0.0:6060" and ev["server_id"] == "gs-0000"
    claimed = gamelift.describe_game_server(GameServerGroupName=group, GameServerId="gs-0000")
    assert claimed["GameServer"]["ClaimStatus"] == "CLAIMED"
    assert sid in claimed["GameServer"]["GameServerData"]

    # The only server is taken: the next room's start fails cleanly...
    host2 = await connect_player(node, "host2")
    sid2 = (await host2.ok("create_session"))["session"]["session_id"]
    await host2.error("start_session", "NO_SERVER_AVAILABLE")
    failed = await host2.event("session_start_failed")
    assert failed["error"]["code"] == "NO_SERVER_AVAILABLE"
    assert failed["session"]["session_state"] == "WAITING"
    assert [s["session_id"] for s in (await guest.request("list_sessions"))["sessions"]] == [sid2]
    # ...and succeeds once a game server registers.
    register_servers(gamelift, group, 1, start=1)
    again = await host2.ok("start_session")
    assert again["session"]["server_endpoint"] == "10.0.0.1:6060"
    gamelift.close()


async def test_fleetiq_throttling_is_retried(make_node, redis_url, fleetiq: FleetIQProcess,
                                             connect_player) -> None:
    group = f"lobby-{os.getpid()}-{next(_tables)}"
    gamelift = make_client("gamelift", endpoint_url=fleetiq.url)
    register_servers(gamelift, group, 1)
    node = await make_node(redis_url=redis_url, fleetiq_group=group,
                           aws_endpoint_url=fleetiq.url)
    fleetiq.inject_faults({"ClaimGameServer": [
        {"status": 400, "type": "ThrottlingException"},
        {"status": 500, "type": "InternalServiceException"},
    ]})
    try:
        host = await connect_player(node, "host")
        await host.ok("create_session")
        started = await host.ok("start_session")
        assert started["session"]["server_endpoint"] == "10.0.0.0:6060"
        assert node.allocator.retries == 2  # type: ignore[attr-defined]
    finally:
        fleetiq.clear_faults()
        gamelift.close()


async def test_a_burst_of_starts_above_gamelifts_claim_limit(make_node, redis_url,
                                                              connect_player) -> None:
    """8 rooms start at once against a FleetIQ that allows 5 claims a second, bursts of
    2 (AWS: 20 and 40 per account): on a node without pacing every start still gets a
    server (throttled claims are retried); on a node paced under the limit
    (--fleetiq-claims-per-second), GameLift throttles none of its claims."""
    with run_fleetiq_local(claim_rate=5.0, claim_burst=2) as throttled:
        gamelift = make_client("gamelift", endpoint_url=throttled.url)
        try:
            # Paced first, while the bucket is full; then the same burst unpaced.
            for paced, group in ((4.0, "burst-paced"), (0.0, "burst-plain")):
                register_servers(gamelift, group, 8)
                node = await make_node(redis_url=redis_url, fleetiq_group=group,
                                       aws_endpoint_url=throttled.url,
                                       fleetiq_claims_per_second=paced, fleetiq_claim_burst=2)
                hosts = [await connect_player(node, f"host{i}") for i in range(8)]
                for host in hosts:
                    await host.ok("create_session")
                started = await asyncio.gather(*(h.ok("start_session") for h in hosts))
                endpoints = {s["session"]["server_endpoint"] for s in started}
                assert len(endpoints) == 8 and all(e.startswith("10.0.0.") for e in endpoints)
                allocator = node.allocator
                assert allocator.failures == 0  # type: ignore[attr-defined]
                throttles = allocator.throttled  # type: ignore[attr-defined]
                assert (throttles > 0) if not paced else (throttles == 0), (paced, throttles)
                # Operators see it: GameLift's answers that were throttling.
                status, body = await http_request(node.port, "GET", "/metrics")
                assert status == 200
                assert f"lobby_allocator_throttled_total {float(throttles)}" in body.decode()
        finally:
            gamelift.close()


async def test_callbacks_need_the_key(make_mode_node, connect_player) -> None:
    node = await make_mode_node(server_key=KEY)
    host = await connect_player(node, "host")
    await host.ok("create_session")
    sid = (await host.ok("start_session"))["session"]["session_id"]
    path = f"/v1/sessions/{sid}/in-progress"
    status, body = await http_request(node.port, "POST", path)
    assert status == 401 and b"Bearer" in body
    assert (await http_request(node.port, "POST", path, auth("wrong")))[0] == 403
    assert (await http_request(node.port, "POST", path, {"Authorization": "Basic x"}))[0] == 401
    assert (await http_request(node.port, "POST", f"/v1/sessions/{sid}/complete",
                               auth("wrong")))[0] == 403
    # Nothing changed.
    status, body = await http_request(node.port, "GET", f"/v1/sessions/{sid}", auth())
    assert status == 200 and b'"session_state":"CONNECTING"' in body
    assert host.no_event() or (await host.event()).get("type") == "session_started"
    # With the key: in progress, idempotent, then complete; unknown sessions 404.
    assert (await http_request(node.port, "POST", path, auth()))[0] == 200
    assert (await http_request(node.port, "POST", path, auth()))[0] == 200
    assert (await http_request(node.port, "POST", "/v1/sessions/nope/complete", auth()))[0] == 404
    assert (await http_request(node.port, "GET", path, auth()))[0] == 405
    assert (await http_request(node.port, "POST", f"/v1/sessions/{sid}/complete", auth()))[0] \
        == 200
    assert (await host.event("session_closed"))["reason"] == "completed"


async def test_callbacks_refused_without_configured_key(node, connect_player) -> None:
    host = await connect_player(node, "host")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    await host.ok("start_session")
    for key in ("", KEY):
        status, body = await http_request(
            node.port, "POST", f"/v1/sessions/{sid}/in-progress", auth(key) if key else None)
        assert status == 403 and b"--server-key" in body
    status, body = await http_request(node.port, "GET", f"/v1/sessions/{sid}", auth())
    assert status == 403


async def test_in_progress_on_waiting_session_conflicts(node, make_node, connect_player) -> None:
    keyed = await make_node(server_key=KEY)
    host = await connect_player(keyed, "host")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    status, body = await http_request(keyed.port, "POST", f"/v1/sessions/{sid}/in-progress",
                                      auth())
    assert status == 409 and b"CONNECTING" in body


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


async def test_redis_restarted_empty_rebuilds_from_dynamodb(
    make_node, own_redis: RedisServer, moto_endpoint: str, table_name: str,  # noqa: F811
    connect_player,
) -> None:
    settings = {"redis_url": own_redis.url, "dynamodb": True, "dynamodb_table": table_name,
                "dynamodb_endpoint_url": moto_endpoint}
    n1 = await make_node(**settings)
    n2 = await make_node(**settings)
    host = await connect_player(n1, "host")
    guest = await connect_player(n2, "guest")
    waiting_host = await connect_player(n1, "waiter")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid)
    await host.ok("start_session")
    wsid = (await waiting_host.ok("create_session", name="still waiting"))["session"][
        "session_id"]
    for node in (n1, n2):
        assert node.persistence is not None
        await node.persistence.flush(10)

    restores = [redis_bus(n).restores for n in (n1, n2)]
    own_redis.restart_empty()
    await guest.close()  # the guest drops while Redis is gone, then resumes

    back = await connect_player(n2, None)
    reply = await back.ok("hello", resume_token=guest.resume_token)
    assert reply["resumed"] is True and reply["player_id"] == guest.player_id
    assert reply["session"]["session_id"] == sid
    assert reply["session"]["server_endpoint"] == "127.0.0.1:6060"
    assert reply["session"]["session_state"] == "CONNECTING"

    # The waiting room is browsable again, and its host (still connected to node 1)
    # was re-registered: it can act without reconnecting.
    await n1.check_store()
    # Pushes published before a node's bus has subscribed again are lost (the next
    # event carries the whole session): wait for both buses.
    await bus_restored([n1, n2], restores)
    browser = await connect_player(n2, "browser")
    listed = await browser.ok("list_sessions")
    assert [s["session_id"] for s in listed["sessions"]] == [wsid]
    await browser.ok("join_session", session_id=wsid)
    assert (await waiting_host.event("player_joined"))["player_id"] == browser.player_id
    assert (await waiting_host.request("start_session"))["ok"] is True


async def test_idle_and_connecting_timeouts_two_nodes(make_node, redis_url, connect_player
                                                      ) -> None:
    settings = {"redis_url": redis_url, "waiting_idle_seconds": 0.4,
                "connecting_timeout_seconds": 0.4}

    class Stuck:
        """A claim that does not answer until released: the session stays CONNECTING."""

        def __init__(self) -> None:
            self.release = asyncio.Event()

        async def allocate(self, session_id: str, player_ids: list[str]) -> Any:
            await self.release.wait()
            raise NoServerAvailable("released")

        async def close(self) -> None:
            return None

    n1 = await make_node(**settings)
    n2 = await make_node(**settings)
    a = await connect_player(n1, "a")
    b = await connect_player(n2, "b")
    sid = (await a.ok("create_session"))["session"]["session_id"]
    await b.ok("join_session", session_id=sid)
    for p in (a, b):
        closed = await p.event("session_closed", timeout=5)
        assert closed == {"type": "session_closed", "session_id": sid, "reason": "idle"}
    await a.ok("create_session")  # free again

    # CONNECTING that never reaches IN_PROGRESS: the game server went silent.
    n3 = await make_node(**settings)
    stuck = Stuck()
    n3.allocator = n3.lobby.allocator = stuck  # type: ignore[assignment]
    c = await connect_player(n3, "c")
    d = await connect_player(n1, "d")
    sid2 = (await c.ok("create_session"))["session"]["session_id"]
    await d.ok("join_session", session_id=sid2)
    await c.ws.send('{"type": "start_session", "id": 99}')
    closed = await d.event("session_closed", timeout=5)
    assert closed["reason"] == "server_timeout" and closed["session_id"] == sid2
    assert (await c.event("session_closed", timeout=5))["reason"] == "server_timeout"
    # Exactly one node closed it: no duplicate pushes.
    await asyncio.sleep(0.3)
    assert d.no_event()
    # The claim answering late finds the session gone and changes nothing.
    stuck.release.set()
    late = await asyncio.wait_for(c.orphans.get(), 5)
    assert late["id"] == 99 and late["error"]["code"] == "NO_SERVER_AVAILABLE"
