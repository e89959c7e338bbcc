"""lobby.fleetiq_local and FleetIQAllocator against a real fleetiq_local subprocess.

No mocks: the real boto3 gamelift client talks HTTP to the local endpoint, and
faults are injected server-side so the allocator's retry path sees the same
botocore exceptions it would see from AWS.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from lobby.allocators.base import Allocation, NoServerAvailable
from lobby.allocators.fleetiq import (
    MAX_GAME_SERVER_DATA,
    FleetIQAllocator,
    encode_game_server_data,
)
from lobby.aws import make_client
from lobby.fleetiq_local import FleetIQLocal
from tests.fleetiq_fixtures import (
    PREDECLARED_GROUP,
    FleetIQProcess,
    _fleetiq_long_ttl,
    _fleetiq_short_ttl,
    fleetiq_local,
    fleetiq_local_short_ttl,
    fleetiq_url,
    fleetiq_with_servers,
    gamelift,
    group_name,
    instance_id,
    register_servers,
)

__all__ = [  # fixtures, used by name
    "_fleetiq_long_ttl",
    "_fleetiq_short_ttl",
    "fleetiq_local",
    "fleetiq_local_short_ttl",
    "fleetiq_url",
    "gamelift",
    "group_name",
]

FAST = {"base_delay": 0.01, "max_delay": 0.05}


@pytest.fixture(params=["async", "boto3"])
def kind(request: pytest.FixtureRequest) -> str:
    """The allocator's GameLift client: on the event loop, or boto3 in threads."""
    return str(request.param)


def allocator(kind: str, url: str, group: str, **kwargs: Any) -> FleetIQAllocator:
    return FleetIQAllocator(group, endpoint_url=url, client=kind, **{**FAST, **kwargs})


def describe(client: Any, group: str, server_id: str) -> dict[str, Any]:
    result: dict[str, Any] = client.describe_game_server(
        GameServerGroupName=group, GameServerId=server_id
    )["GameServer"]
    return result


def wait_until_unclaimed(client: Any, group: str, server_id: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "ClaimStatus" not in describe(client, group, server_id):
            return time.monotonic()
        time.sleep(0.02)
    pytest.fail(f"claim on {server_id} did not expire within {timeout}s")


# -- the local endpoint, through the real boto3 client ---------------------------


def test_health_and_unknown_operation(fleetiq_url: str) -> None:
    with urllib.request.urlopen(fleetiq_url + "/_local/health", timeout=5) as resp:
        assert resp.status == 200

    req = urllib.request.Request(
        fleetiq_url + "/",
        data=b"{}",
        method="POST",
        headers={
            "X-Amz-Target": "GameLift.LaunchRockets",
            "Content-Type": "application/x-amz-json-1.1",
        },
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 400
    assert json.loads(info.value.read())["__type"] == "UnknownOperationException"


def test_register_then_claim_returns_connection_info(gamelift: Any, group_name: str) -> None:
    registered = gamelift.register_game_server(
        GameServerGroupName=group_name,
        GameServerId="gs-a",
        InstanceId=instance_id(1),
        ConnectionInfo="10.0.0.7:6060",
        GameServerData="boot",
    )["GameServer"]
    assert registered["UtilizationStatus"] == "AVAILABLE"
    assert "ClaimStatus" not in registered

    claimed = gamelift.claim_game_server(
        GameServerGroupName=group_name,
        GameServerData='{"session_id":"s1"}',
        FilterOption={"InstanceStatuses": ["ACTIVE"]},
    )["GameServer"]
    assert claimed["GameServerId"] == "gs-a"
    assert claimed["ConnectionInfo"] == "10.0.0.7:6060"
    assert claimed["ClaimStatus"] == "CLAIMED"
    assert claimed["UtilizationStatus"] == "AVAILABLE"
    assert claimed["GameServerData"] == '{"session_id":"s1"}'
    assert claimed["GameServerGroupArn"].endswith(":gameservergroup/" + group_name)
    # The JSON protocol's epoch-seconds timestamps come back as datetimes.
    assert claimed["LastClaimTime"] >= claimed["RegistrationTime"]


def test_second_claim_is_out_of_capacity(gamelift: Any, group_name: str) -> None:
    register_servers(gamelift, group_name, 1)
    gamelift.claim_game_server(GameServerGroupName=group_name)
    with pytest.raises(gamelift.exceptions.OutOfCapacityException):
        gamelift.claim_game_server(GameServerGroupName=group_name)


def test_claim_expires_after_ttl(fleetiq_local_short_ttl: FleetIQProcess, group_name: str) -> None:
    ttl = fleetiq_local_short_ttl.claim_ttl_seconds
    client = make_client("gamelift", endpoint_url=fleetiq_local_short_ttl.url)
    [server_id] = register_servers(client, group_name, 1)

    before_claim = time.monotonic()
    client.claim_game_server(GameServerGroupName=group_name)
    with pytest.raises(client.exceptions.OutOfCapacityException):
        client.claim_game_server(GameServerGroupName=group_name)

    expired_at = wait_until_unclaimed(client, group_name, server_id, timeout=ttl + 5)
    # Same monotonic clock in both processes: the claim cannot lapse early.
    assert expired_at - before_claim >= ttl
    again = client.claim_game_server(GameServerGroupName=group_name)["GameServer"]
    assert again["GameServerId"] == server_id


def test_utilized_keeps_the_claim(fleetiq_local_short_ttl: FleetIQProcess, group_name: str) -> None:
    ttl = fleetiq_local_short_ttl.claim_ttl_seconds
    client = make_client("gamelift", endpoint_url=fleetiq_local_short_ttl.url)
    [server_id] = register_servers(client, group_name, 1)
    client.claim_game_server(GameServerGroupName=group_name)
    updated = client.update_game_server(
        GameServerGroupName=group_name,
        GameServerId=server_id,
        UtilizationStatus="UTILIZED",
        HealthCheck="HEALTHY",
    )["GameServer"]
    assert updated["UtilizationStatus"] == "UTILIZED"
    assert "LastHealthCheckTime" in updated

    # Sleeping past the TTL is the behaviour under test: the claim must survive it.
    time.sleep(ttl + 0.2)
    assert describe(client, group_name, server_id)["ClaimStatus"] == "CLAIMED"
    with pytest.raises(client.exceptions.OutOfCapacityException):
        client.claim_game_server(GameServerGroupName=group_name)
    with pytest.raises(client.exceptions.ConflictException):
        client.claim_game_server(GameServerGroupName=group_name, GameServerId=server_id)

    # As on FleetIQ, UTILIZED cannot go back to AVAILABLE: the server is
    # deregistered after its game and registers again.
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.update_game_server(
            GameServerGroupName=group_name, GameServerId=server_id, UtilizationStatus="AVAILABLE"
        )
    assert describe(client, group_name, server_id)["UtilizationStatus"] == "UTILIZED"
    client.deregister_game_server(GameServerGroupName=group_name, GameServerId=server_id)
    register_servers(client, group_name, 1)
    assert "ClaimStatus" not in describe(client, group_name, server_id)
    claimed = client.claim_game_server(GameServerGroupName=group_name)["GameServer"]
    assert claimed["GameServerId"] == server_id


def test_claims_follow_registration_order(
    fleetiq_local_short_ttl: FleetIQProcess, group_name: str
) -> None:
    """A claim takes the first claimable server in registration order, whatever
    made it claimable again: a lapsed claim, an AVAILABLE update; a server
    registered again comes last; a UTILIZED one never comes back."""
    ttl = fleetiq_local_short_ttl.claim_ttl_seconds
    client = make_client("gamelift", endpoint_url=fleetiq_local_short_ttl.url)
    a, b, c, d = register_servers(client, group_name, 4)

    def claim() -> str:
        return str(client.claim_game_server(GameServerGroupName=group_name)["GameServer"][
            "GameServerId"])

    assert [claim(), claim(), claim()] == [a, b, c]
    client.update_game_server(GameServerGroupName=group_name, GameServerId=b,
                              UtilizationStatus="UTILIZED")
    client.update_game_server(GameServerGroupName=group_name, GameServerId=c,
                              UtilizationStatus="AVAILABLE")
    assert claim() == c  # before d: released by the update
    client.update_game_server(GameServerGroupName=group_name, GameServerId=c,
                              UtilizationStatus="UTILIZED")
    wait_until_unclaimed(client, group_name, a, timeout=ttl + 5)
    assert claim() == a  # lapsed, and still before d
    client.deregister_game_server(GameServerGroupName=group_name, GameServerId=a)
    register_servers(client, group_name, 1)  # a again, registered last
    assert [claim(), claim()] == [d, a]
    with pytest.raises(client.exceptions.OutOfCapacityException):
        claim()
    client.close()


def test_update_available_releases_a_claim(gamelift: Any, group_name: str) -> None:
    [server_id] = register_servers(gamelift, group_name, 1)
    gamelift.claim_game_server(GameServerGroupName=group_name)
    released = gamelift.update_game_server(
        GameServerGroupName=group_name,
        GameServerId=server_id,
        UtilizationStatus="AVAILABLE",
        GameServerData="idle",
    )["GameServer"]
    assert "ClaimStatus" not in released
    assert released["GameServerData"] == "idle"
    assert gamelift.claim_game_server(GameServerGroupName=group_name)["GameServer"][
        "GameServerId"
    ] == server_id


def test_claim_specific_server(gamelift: Any, group_name: str) -> None:
    register_servers(gamelift, group_name, 3)
    claimed = gamelift.claim_game_server(GameServerGroupName=group_name, GameServerId="gs-0002")
    assert claimed["GameServer"]["GameServerId"] == "gs-0002"
    with pytest.raises(gamelift.exceptions.ConflictException):
        gamelift.claim_game_server(GameServerGroupName=group_name, GameServerId="gs-0002")
    with pytest.raises(gamelift.exceptions.NotFoundException):
        gamelift.claim_game_server(GameServerGroupName=group_name, GameServerId="gs-9999")
    # Anonymous claims skip the claimed server.
    others = {
        gamelift.claim_game_server(GameServerGroupName=group_name)["GameServer"]["GameServerId"]
        for _ in range(2)
    }
    assert others == {"gs-0000", "gs-0001"}


def test_duplicate_register_and_unknown_ids(gamelift: Any, group_name: str) -> None:
    register_servers(gamelift, group_name, 1)
    with pytest.raises(gamelift.exceptions.ConflictException):
        register_servers(gamelift, group_name, 1)
    with pytest.raises(gamelift.exceptions.NotFoundException):
        describe(gamelift, group_name, "gs-missing")
    with pytest.raises(gamelift.exceptions.NotFoundException):
        gamelift.update_game_server(
            GameServerGroupName=group_name, GameServerId="gs-missing", HealthCheck="HEALTHY"
        )


def test_unknown_and_predeclared_groups(gamelift: Any) -> None:
    with pytest.raises(gamelift.exceptions.NotFoundException):
        gamelift.claim_game_server(GameServerGroupName="never-seen")
    with pytest.raises(gamelift.exceptions.NotFoundException):
        gamelift.list_game_servers(GameServerGroupName="never-seen")
    # --group creates the group up front: empty, so out of capacity, not unknown.
    assert gamelift.list_game_servers(GameServerGroupName=PREDECLARED_GROUP)["GameServers"] == []
    with pytest.raises(gamelift.exceptions.OutOfCapacityException):
        gamelift.claim_game_server(GameServerGroupName=PREDECLARED_GROUP)
    # Group ARNs are accepted wherever a name is.
    arn = "arn:aws:gamelift:us-east-1:123456789012:gameservergroup/" + PREDECLARED_GROUP
    assert gamelift.list_game_servers(GameServerGroupName=arn)["GameServers"] == []


def test_deregister(gamelift: Any, group_name: str) -> None:
    register_servers(gamelift, group_name, 2)
    gamelift.deregister_game_server(GameServerGroupName=group_name, GameServerId="gs-0000")
    with pytest.raises(gamelift.exceptions.NotFoundException):
        describe(gamelift, group_name, "gs-0000")
    with pytest.raises(gamelift.exceptions.NotFoundException):
        gamelift.deregister_game_server(GameServerGroupName=group_name, GameServerId="gs-0000")
    assert gamelift.claim_game_server(GameServerGroupName=group_name)["GameServer"][
        "GameServerId"
    ] == "gs-0001"
    # The id is free again once deregistered.
    register_servers(gamelift, group_name, 1)


def test_list_game_servers_pagination(gamelift: Any, group_name: str) -> None:
    ids = register_servers(gamelift, group_name, 5)

    pages = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"GameServerGroupName": group_name, "Limit": 2}
        if token:
            kwargs["NextToken"] = token
        page = gamelift.list_game_servers(**kwargs)
        pages.append([s["GameServerId"] for s in page["GameServers"]])
        token = page.get("NextToken")
        if not token:
            break
    assert pages == [ids[0:2], ids[2:4], ids[4:5]]

    paginator = gamelift.get_paginator("list_game_servers")
    descending = [
        s["GameServerId"]
        for page in paginator.paginate(
            GameServerGroupName=group_name,
            SortOrder="DESCENDING",
            PaginationConfig={"PageSize": 2},
        )
        for s in page["GameServers"]
    ]
    assert descending == ids[::-1]

    # Deregistering between pages neither repeats nor skips the remaining servers.
    first = gamelift.list_game_servers(GameServerGroupName=group_name, Limit=2)
    gamelift.deregister_game_server(GameServerGroupName=group_name, GameServerId=ids[1])
    rest = gamelift.list_game_servers(GameServerGroupName=group_name, NextToken=first["NextToken"])
    assert [s["GameServerId"] for s in rest["GameServers"]] == ids[2:]
    assert "NextToken" not in rest

    with pytest.raises(gamelift.exceptions.InvalidRequestException):
        gamelift.list_game_servers(GameServerGroupName=group_name, NextToken="garbage")


def test_server_side_validation(gamelift: Any, group_name: str) -> None:
    register_servers(gamelift, group_name, 1)
    # botocore checks only minimum lengths; the endpoint enforces the rest, as AWS does.
    with pytest.raises(gamelift.exceptions.InvalidRequestException):
        gamelift.claim_game_server(
            GameServerGroupName=group_name, GameServerData="x" * (MAX_GAME_SERVER_DATA + 1)
        )
    with pytest.raises(gamelift.exceptions.InvalidRequestException):
        gamelift.register_game_server(
            GameServerGroupName=group_name, GameServerId="gs-bad", InstanceId="x" * 19
        )
    with pytest.raises(gamelift.exceptions.InvalidRequestException):
        gamelift.register_game_server(
            GameServerGroupName=group_name, GameServerId="bad id!", InstanceId=instance_id(9)
        )
    # A rejected claim claimed nothing.
    gamelift.claim_game_server(GameServerGroupName=group_name)


def test_in_process_server_on_a_free_port() -> None:
    local = FleetIQLocal(port=0, claim_ttl_seconds=5, groups=["g"])
    local.start()
    try:
        assert local.port != 0
        client = make_client("gamelift", endpoint_url=local.url)
        assert client.list_game_servers(GameServerGroupName="g")["GameServers"] == []
        client.close()
    finally:
        local.stop()


# -- FleetIQAllocator --------------------------------------------------------------


async def test_allocator_claims_a_server(
    kind: str, fleetiq_url: str, gamelift: Any, group_name: str
) -> None:
    register_servers(gamelift, group_name, 1)
    alloc = allocator(kind, fleetiq_url, group_name)
    try:
        allocation = await alloc.allocate("sess-1", ["alice", "bob"])
        assert allocation == Allocation(server_id="gs-0000", endpoint="10.0.0.0:6060")
        data = json.loads(describe(gamelift, group_name, "gs-0000")["GameServerData"])
        assert data == {"session_id": "sess-1", "players": ["alice", "bob"]}

        with pytest.raises(NoServerAvailable):
            await alloc.allocate("sess-2", ["carol"])
        assert (alloc.claims, alloc.retries, alloc.failures) == (1, 0, 1)
        assert alloc.out_of_capacity == 1
    finally:
        await alloc.close()


async def test_allocator_truncates_game_server_data(
    kind: str, fleetiq_url: str, gamelift: Any, group_name: str
) -> None:
    register_servers(gamelift, group_name, 1)
    players = [f"player-{n:03d}-" + "x" * 40 for n in range(200)]
    alloc = allocator(kind, fleetiq_url, group_name)
    try:
        allocation = await alloc.allocate("sess-big", players)
    finally:
        await alloc.close()
    stored = describe(gamelift, group_name, allocation.server_id)["GameServerData"]
    assert len(stored) <= MAX_GAME_SERVER_DATA
    data = json.loads(stored)
    assert data["session_id"] == "sess-big"
    assert data["players_truncated"] is True
    assert 0 < len(data["players"]) < len(players)
    assert data["players"] == players[: len(data["players"])]


def test_game_server_data_is_the_standard_librarys_ascii_json() -> None:
    """The fast encoding gives the text `json.dumps(ensure_ascii=True)` gives, so
    its length in characters is its length in bytes, whatever the ids hold."""
    cases = [
        ("sess-1", ["alice", "bob"]),
        ("s\"q\\/", ["tab\tnew\nline\x00\x1f\x7f", "é", "名前", "emoji \U0001f600"]),
        ("sess-2", ["x" * 30] * 40),
        ("é" * 300, ["p"]),
    ]
    for sid, players in cases:
        data = encode_game_server_data(sid, players)
        assert data.isascii()
        assert len(data) <= MAX_GAME_SERVER_DATA
        expected = json.dumps({"session_id": sid, "players": players},
                              separators=(",", ":"), ensure_ascii=True)
        if len(expected) <= MAX_GAME_SERVER_DATA:
            assert data == expected
        else:
            assert json.loads(data)["players"] == players[: len(json.loads(data)["players"])]


async def test_allocator_retries_throttling_then_succeeds(
    kind: str, fleetiq_local: FleetIQProcess, gamelift: Any, group_name: str
) -> None:
    register_servers(gamelift, group_name, 1)
    fleetiq_local.inject_faults(
        {
            "ClaimGameServer": [
                {"status": 400, "type": "ThrottlingException"},
                {"status": 400, "type": "ThrottlingException"},
            ]
        }
    )
    alloc = allocator(kind, fleetiq_local.url, group_name)
    try:
        allocation = await alloc.allocate("sess-1", ["p1"])
    finally:
        await alloc.close()
    assert allocation.server_id == "gs-0000"
    assert (alloc.claims, alloc.retries, alloc.failures) == (1, 2, 0)


# GameLift's own ClaimGameServer limit is 20 a second, bursts of 40, per account;
# a tenth of the burst keeps these tests short.
THROTTLED = {"claim_rate": 10.0, "claim_burst": 2}


async def _throttled_burst(kind: str, count: int, **kwargs: Any) -> tuple[
        FleetIQAllocator, list[Any], float]:
    """`count` sessions starting at once on a FleetIQ that allows 10 claims a second."""
    with fleetiq_with_servers("throttled", count, **THROTTLED) as server:
        alloc = allocator(kind, server.url, "throttled", **kwargs)
        try:
            started = time.monotonic()
            results = await asyncio.gather(
                *(alloc.allocate(f"sess-{n}", [f"p{n}"]) for n in range(count)),
                return_exceptions=True)
            return alloc, results, time.monotonic() - started
        finally:
            await alloc.close()


async def test_a_throttled_burst_of_claims_is_waited_out(kind: str) -> None:
    """Throttling means "later": 12 claims at once against 10 a second all get a server
    (after max_attempts, throttled calls go on for throttle_wait seconds)."""
    alloc, results, elapsed = await _throttled_burst(kind, 12)
    allocations = [r for r in results if isinstance(r, Allocation)]
    assert len(allocations) == 12, [r for r in results if not isinstance(r, Allocation)]
    assert len({a.server_id for a in allocations}) == 12
    assert alloc.throttled > 0 and alloc.failures == 0
    assert elapsed >= (12 - THROTTLED["claim_burst"]) / THROTTLED["claim_rate"] * 0.9


async def test_paced_claims_are_not_throttled(kind: str) -> None:
    """claims_per_second under the account's limit: the burst goes out in order, and
    GameLift throttles none of it."""
    alloc, results, elapsed = await _throttled_burst(kind, 12, claims_per_second=8.0,
                                                     claim_burst=2)
    allocations = [r for r in results if isinstance(r, Allocation)]
    assert len(allocations) == 12, [r for r in results if not isinstance(r, Allocation)]
    assert (alloc.throttled, alloc.retries, alloc.failures) == (0, 0, 0)
    # First come, first served: past the burst (sent at once, on two connections),
    # the sessions got the servers in the order they asked.
    ids = [a.server_id for a in allocations]
    assert set(ids[:2]) == {"gs-0000", "gs-0001"}
    assert ids[2:] == [f"gs-{n:04d}" for n in range(2, 12)]
    assert elapsed >= (12 - 2) / 8.0 * 0.9


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500, "type": "InternalServiceException"},
        {"status": 429, "type": "TooManyRequestsException"},
        {"status": 503, "type": "SomethingUnmodeled"},
        {"disconnect": True},
    ],
    ids=["500", "429", "503-unmodeled", "dropped-connection"],
)
async def test_allocator_retries_transient_errors(
    kind: str, fleetiq_local: FleetIQProcess, gamelift: Any, group_name: str, fault: dict[str, Any]
) -> None:
    register_servers(gamelift, group_name, 1)
    fleetiq_local.inject_faults({"ClaimGameServer": [fault]})
    alloc = allocator(kind, fleetiq_local.url, group_name)
    try:
        allocation = await alloc.allocate("sess-1", ["p1"])
    finally:
        await alloc.close()
    assert allocation.server_id == "gs-0000"
    assert alloc.retries == 1


async def test_allocator_gives_up_after_max_attempts(
    kind: str, fleetiq_local: FleetIQProcess, gamelift: Any, group_name: str
) -> None:
    register_servers(gamelift, group_name, 1)
    fleetiq_local.inject_faults(
        {"ClaimGameServer": [{"status": 500, "type": "InternalServiceException"}] * 5}
    )
    alloc = allocator(kind, fleetiq_local.url, group_name, max_attempts=3)
    try:
        with pytest.raises(NoServerAvailable):
            await alloc.allocate("sess-1", ["p1"])
        assert (alloc.claims, alloc.retries, alloc.failures) == (0, 2, 1)
        # Exactly max_attempts calls were made: two of the five faults remain.
        for _ in range(2):
            with pytest.raises(gamelift.exceptions.InternalServiceException):
                gamelift.claim_game_server(GameServerGroupName=group_name)
        assert (await alloc.allocate("sess-2", ["p1"])).server_id == "gs-0000"
    finally:
        await alloc.close()


@pytest.mark.parametrize("error_type", ["InvalidRequestException", "UnauthorizedException"])
async def test_allocator_does_not_retry_client_errors(
    kind: str,
    fleetiq_local: FleetIQProcess,
    gamelift: Any,
    group_name: str,
    error_type: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    register_servers(gamelift, group_name, 1)
    fleetiq_local.inject_faults({"ClaimGameServer": [{"status": 400, "type": error_type}]})
    alloc = allocator(kind, fleetiq_local.url, group_name)
    try:
        with caplog.at_level(logging.ERROR, logger="lobby.fleetiq"), pytest.raises(
            NoServerAvailable
        ):
            await alloc.allocate("sess-1", ["p1"])
    finally:
        await alloc.close()
    assert (alloc.retries, alloc.failures) == (0, 1)
    assert any(error_type in r.getMessage() for r in caplog.records)


async def test_allocator_unknown_group_is_a_logged_config_error(
    kind: str, fleetiq_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    alloc = allocator(kind, fleetiq_url, "no-such-group")
    try:
        with caplog.at_level(logging.ERROR, logger="lobby.fleetiq"), pytest.raises(
            NoServerAvailable
        ):
            await alloc.allocate("sess-1", ["p1"])
    finally:
        await alloc.close()
    assert alloc.retries == 0
    assert any(
        r.levelno == logging.ERROR and "no-such-group" in r.getMessage() for r in caplog.records
    )


async def test_allocator_connection_refused_is_retried_then_fails(kind: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now: every attempt is refused at once.
    alloc = allocator(kind, f"http://127.0.0.1:{port}", "g", max_attempts=3)
    try:
        with pytest.raises(NoServerAvailable):
            await alloc.allocate("sess-1", ["p1"])
    finally:
        await alloc.close()
    assert (alloc.retries, alloc.failures) == (2, 1)


async def test_allocator_rejects_server_without_connection_info(
    kind: str, fleetiq_url: str, gamelift: Any, group_name: str
) -> None:
    register_servers(gamelift, group_name, 1, connection_info=False)
    alloc = allocator(kind, fleetiq_url, group_name)
    try:
        with pytest.raises(NoServerAvailable):
            await alloc.allocate("sess-1", ["p1"])
    finally:
        await alloc.close()
    assert (alloc.claims, alloc.failures) == (0, 1)


async def test_event_loop_keeps_running_during_a_slow_claim(
    kind: str, fleetiq_local: FleetIQProcess, gamelift: Any, group_name: str
) -> None:
    register_servers(gamelift, group_name, 1)
    slow = 0.6
    fleetiq_local.inject_faults({"ClaimGameServer": [{"delay": slow}]})
    alloc = allocator(kind, fleetiq_local.url, group_name)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    try:
        started = time.monotonic()
        allocation = await alloc.allocate("sess-1", ["p1"])
        elapsed = time.monotonic() - started
    finally:
        task.cancel()
        await alloc.close()
    assert allocation.server_id == "gs-0000"
    assert elapsed >= slow
    during = [t for t in ticks if t >= started]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    # A blocked loop would show one gap as long as the slow call.
    assert len(during) >= 10
    assert max(gaps) < slow / 2


async def test_concurrent_allocations_never_share_a_server(
    kind: str, fleetiq_url: str, gamelift: Any, group_name: str
) -> None:
    count = 500
    with ThreadPoolExecutor(max_workers=16) as pool:
        chunks = [(start, 50) for start in range(0, count, 50)]
        list(
            pool.map(
                lambda c: register_servers(gamelift, group_name, c[1], start=c[0]), chunks
            )
        )
    alloc = allocator(kind, fleetiq_url, group_name)
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            *(alloc.allocate(f"sess-{n}", [f"p{n}"]) for n in range(count)),
            return_exceptions=True,
        )
        elapsed = time.monotonic() - started
        allocations = [r for r in results if isinstance(r, Allocation)]
        assert len(allocations) == count, [r for r in results if not isinstance(r, Allocation)]
        assert len({a.server_id for a in allocations}) == count
        assert len({a.endpoint for a in allocations}) == count
        with pytest.raises(NoServerAvailable):
            await alloc.allocate("one-too-many", ["p"])
    finally:
        await alloc.close()
    # Generous bound; on a laptop this takes well under a second.
    assert elapsed < 10


async def test_closed_allocator_refuses_work(kind: str, fleetiq_url: str, group_name: str) -> None:
    alloc = allocator(kind, fleetiq_url, group_name)
    await alloc.close()
    await alloc.close()
    with pytest.raises(NoServerAvailable):
        await alloc.allocate("sess-1", ["p1"])

