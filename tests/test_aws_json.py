"""lobby.aws_json, the GameLift client on the event loop, against a real fleetiq-local.

Its signature is checked against botocore's own SigV4Auth; its errors against
what the real boto3 client raises for the same injected fault.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from lobby.allocators.base import NoServerAvailable
from lobby.allocators.fleetiq import FleetIQAllocator
from lobby.aws import credentials, make_client
from lobby.aws_json import AwsJsonClient, SigV4Signer
from tests.fleetiq_fixtures import (
    FleetIQProcess,
    _fleetiq_long_ttl,
    fleetiq_local,
    fleetiq_url,
    gamelift,
    group_name,
    register_servers,
)

__all__ = ["_fleetiq_long_ttl", "fleetiq_local", "fleetiq_url", "gamelift", "group_name"]

JSON_11 = "application/x-amz-json-1.1"


@pytest.fixture
async def aws(fleetiq_url: str) -> AsyncIterator[AwsJsonClient]:
    client = AwsJsonClient(make_client("gamelift", endpoint_url=fleetiq_url),
                           credentials(fleetiq_url), max_connections=4, read_timeout=0.5)
    yield client
    await client.close()


@pytest.mark.parametrize(("url", "host", "token"), [
    ("https://gamelift.eu-west-1.amazonaws.com/", "gamelift.eu-west-1.amazonaws.com", None),
    ("http://127.0.0.1:9090/", "127.0.0.1:9090", None),
    ("https://gamelift.eu-west-1.amazonaws.com/", "gamelift.eu-west-1.amazonaws.com",
     "FwoGZXIvYXdzE  session  token=="),
])
def test_signature_is_botocores(url: str, host: str, token: str | None) -> None:
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    body = b'{"GameServerGroupName":"g","GameServerData":"{\\"session_id\\":\\"s1\\"}"}'
    request = AWSRequest(method="POST", url=url, data=body, headers={
        "X-Amz-Target": "GameLift.ClaimGameServer", "Content-Type": JSON_11})
    SigV4Auth(creds, "gamelift", "eu-west-1").add_auth(request)
    now = datetime.datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    signer = SigV4Signer("gamelift", "eu-west-1")
    for _ in range(2):  # the second time with the cached signing key
        ours = dict(signer.headers(
            host=host, target="GameLift.ClaimGameServer", content_type=JSON_11, body=body,
            access_key=creds.access_key, secret_key=creds.secret_key, token=token, now=now))
        assert ours["authorization"] == request.headers["Authorization"]
        assert ours["x-amz-date"] == request.headers["X-Amz-Date"]
    if token:
        assert ours["x-amz-security-token"] == token
    # Another day, another key: the cached one must not sign tomorrow's requests.
    def tomorrow(with_signer: SigV4Signer) -> str:
        return dict(with_signer.headers(
            host=host, target="GameLift.ClaimGameServer", content_type=JSON_11, body=body,
            access_key=creds.access_key, secret_key=creds.secret_key, token=token,
            now=now + datetime.timedelta(days=1)))["authorization"]

    assert tomorrow(signer) == tomorrow(SigV4Signer("gamelift", "eu-west-1"))
    assert tomorrow(signer) != ours["authorization"]


async def test_calls_answer_what_boto3_answers_on_one_kept_alive_connection(
    aws: AwsJsonClient, gamelift: Any, group_name: str
) -> None:
    register_servers(gamelift, group_name, 2)
    claimed = (await aws.call("claim_game_server", GameServerGroupName=group_name,
                              GameServerData='{"session_id":"s1"}'))["GameServer"]
    assert claimed["GameServerId"] == "gs-0000"
    assert claimed["ClaimStatus"] == "CLAIMED"
    await aws.call("update_game_server", GameServerGroupName=group_name,
                   GameServerId="gs-0000", UtilizationStatus="UTILIZED")
    ours = (await aws.call("describe_game_server", GameServerGroupName=group_name,
                           GameServerId="gs-0000"))["GameServer"]
    theirs = gamelift.describe_game_server(GameServerGroupName=group_name,
                                           GameServerId="gs-0000")["GameServer"]
    assert ours["UtilizationStatus"] == theirs["UtilizationStatus"] == "UTILIZED"
    assert ours["GameServerData"] == theirs["GameServerData"] == '{"session_id":"s1"}'
    # Timestamps stay epoch seconds (boto3 makes datetimes of them).
    assert ours["LastClaimTime"] == pytest.approx(theirs["LastClaimTime"].timestamp())
    listed = await aws.call("list_game_servers", GameServerGroupName=group_name, Limit=1)
    assert len(listed["GameServers"]) == 1 and listed["NextToken"]
    assert aws.connections_opened == 1


async def test_concurrent_calls_are_bounded_by_the_pool(
    aws: AwsJsonClient, gamelift: Any, group_name: str
) -> None:
    register_servers(gamelift, group_name, 40)
    results = await asyncio.gather(*(
        aws.call("claim_game_server", GameServerGroupName=group_name) for _ in range(40)))
    assert len({r["GameServer"]["GameServerId"] for r in results}) == 40
    assert aws.connections_opened == 4  # max_connections


async def test_errors_are_boto3s(
    fleetiq_local: FleetIQProcess, aws: AwsJsonClient, gamelift: Any, group_name: str
) -> None:
    """Each fault once through boto3 and once through the async client: the same
    modeled exception class, code, message and HTTP status."""
    faults = [
        {"status": 400, "type": "ThrottlingException", "message": "slow down"},
        {"status": 429, "type": "TooManyRequestsException"},
        {"status": 500, "type": "InternalServiceException"},
        {"status": 503, "type": "SomethingUnmodeled", "message": "gone fishing"},
        {"status": 400, "type": "UnauthorizedException", "message": "who are you"},
    ]
    for fault in faults:
        fleetiq_local.inject_faults({"ClaimGameServer": [fault, fault]})
        with pytest.raises(ClientError) as boto:
            gamelift.claim_game_server(GameServerGroupName=group_name)
        with pytest.raises(ClientError) as ours:
            await aws.call("claim_game_server", GameServerGroupName=group_name)
        # (Each client has its own classes, made from the same model.)
        assert type(ours.value).__name__ == type(boto.value).__name__
        assert ours.value.response["Error"] == boto.value.response["Error"]
        status = boto.value.response["ResponseMetadata"]["HTTPStatusCode"]
        assert ours.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
        assert ours.value.operation_name == "ClaimGameServer"
    # No capacity and unknown groups come from the service itself.
    register_servers(gamelift, group_name, 1)
    gamelift.claim_game_server(GameServerGroupName=group_name)
    with pytest.raises(ClientError) as info:
        await aws.call("claim_game_server", GameServerGroupName=group_name)
    assert type(info.value).__name__ == info.value.response["Error"]["Code"]
    assert info.value.response["Error"]["Code"] == "OutOfCapacityException"
    with pytest.raises(ClientError) as info:
        await aws.call("describe_game_server", GameServerGroupName="nope",
                       GameServerId="gs-0000")
    assert type(info.value).__name__ == "NotFoundException"
    # Client-side validation, before anything is sent, as boto3's.
    with pytest.raises(ParamValidationError):
        await aws.call("register_game_server", GameServerGroupName=group_name,
                       GameServerId="gs-x", InstanceId="i-short")


async def test_validation_is_boto3s_for_every_call_after_one_passed(
    aws: AwsJsonClient, gamelift: Any, group_name: str
) -> None:
    """A call shape that passed once is not checked again, but a call with the
    same names and a value too short for the model, or of another type, is
    still refused before anything is sent."""
    register_servers(gamelift, group_name, 1)
    claimed = await aws.call("claim_game_server", GameServerGroupName=group_name,
                             GameServerData="first")
    server = claimed["GameServer"]["GameServerId"]
    ok = {"GameServerGroupName": group_name, "GameServerId": server}
    for _ in range(2):
        await aws.call("update_game_server", **ok, GameServerData="x" * 10)
    bad: list[dict[str, Any]] = [
        {**ok, "GameServerData": ""},  # min length 1
        {**ok, "GameServerId": "gs", "GameServerData": "x"},  # min length 3
        {**ok, "GameServerData": 7},  # a number where the model has a string
        {**ok, "GameServerData": "x", "Nope": "x"},  # not in the model
        {"GameServerGroupName": group_name, "GameServerData": "x"},  # id missing
    ]
    for params in bad:
        with pytest.raises(ParamValidationError):
            gamelift.update_game_server(**params)
        with pytest.raises(ParamValidationError):
            await aws.call("update_game_server", **params)
    await aws.call("update_game_server", **ok, GameServerData="y")
    described = gamelift.describe_game_server(GameServerGroupName=group_name,
                                              GameServerId=server)
    assert described["GameServer"]["GameServerData"] == "y"


async def test_lost_answers_and_timeouts(
    fleetiq_local: FleetIQProcess, aws: AwsJsonClient, gamelift: Any, group_name: str
) -> None:
    register_servers(gamelift, group_name, 3)
    await aws.call("list_game_servers", GameServerGroupName=group_name)  # one connection open
    fleetiq_local.inject_faults({"ClaimGameServer": [{"disconnect": True}]})
    with pytest.raises(ConnectionClosedError):
        await aws.call("claim_game_server", GameServerGroupName=group_name)
    # Slower than read_timeout (0.5 s): the answer is abandoned with its connection.
    fleetiq_local.inject_faults({"ClaimGameServer": [{"delay": 1.5}]})
    with pytest.raises(ReadTimeoutError):
        await aws.call("claim_game_server", GameServerGroupName=group_name)
    opened = aws.connections_opened
    claimed = await aws.call("claim_game_server", GameServerGroupName=group_name)
    assert claimed["GameServer"]["GameServerId"]
    assert aws.connections_opened == opened + 1


async def test_connection_refused_and_no_credentials(fleetiq_url: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    refused = AwsJsonClient(make_client("gamelift", endpoint_url=url), credentials(url))
    with pytest.raises(EndpointConnectionError):
        await refused.call("list_game_servers", GameServerGroupName="g")
    anonymous = AwsJsonClient(make_client("gamelift", endpoint_url=fleetiq_url), None)
    with pytest.raises(NoCredentialsError):
        await anonymous.call("list_game_servers", GameServerGroupName="g")


@pytest.mark.parametrize("kind", ["async", "boto3"])
async def test_allocator_without_credentials_fails_the_claim_cleanly(
    fleetiq_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A profile with no keys (and no instance metadata to ask): both clients
    refuse before sending, and the start fails with NoServerAvailable."""
    config = tmp_path / "config"
    config.write_text("[profile lobby-no-keys]\nregion = us-east-1\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_PROFILE", "lobby-no-keys")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    alloc = FleetIQAllocator("g", endpoint_url=fleetiq_url, client=kind)
    try:
        with pytest.raises(NoServerAvailable, match="NoCredentialsError"):
            await alloc.allocate("sess-1", ["p1"])
    finally:
        await alloc.close()
    assert (alloc.retries, alloc.failures) == (0, 1)
