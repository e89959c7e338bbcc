"""boto3 clients configured the one way the project needs them.

boto3 is blocking; callers run these clients in a thread pool (never on the
event loop), or hand them to lobby.aws_json.AwsJsonClient, which makes the
same calls on the loop (with credentials()). botocore's own retries are turned
off so that each caller owns its retry policy (bounded, with backoff and
jitter) and can tell capacity errors from transient ones.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config


def _local_keys(endpoint_url: str | None) -> dict[str, str]:
    # Local endpoints (lobby fleetiq-local, moto) accept any credentials; a
    # laptop without an AWS profile should still be able to talk to them.
    if endpoint_url and not (os.environ.get("AWS_ACCESS_KEY_ID")
                             or os.environ.get("AWS_PROFILE")):
        return {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    return {}


def make_client(
    service: str,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    max_pool_connections: int = 32,
    connect_timeout: float = 2.0,
    read_timeout: float = 5.0,
) -> Any:
    kwargs: dict[str, Any] = dict(_local_keys(endpoint_url))
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=max_pool_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    session = boto3.session.Session()
    return session.client(
        service, region_name=region or os.environ.get("AWS_REGION") or "us-east-1",
        config=config, **kwargs,
    )


def credentials(endpoint_url: str | None = None) -> Any:
    """The botocore credentials a client from make_client(endpoint_url=...) signs
    with (boto3's usual chain), or None when there are none."""
    return boto3.session.Session(**_local_keys(endpoint_url)).get_credentials()
