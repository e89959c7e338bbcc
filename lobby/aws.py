"""boto3 clients configured the one way the project needs them.

boto3 is blocking; callers run these clients in a thread pool (never on the
event loop). botocore's own retries are turned off so that each caller owns its
retry policy (bounded, with backoff and jitter) and can tell capacity errors
from transient ones.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config


def make_client(
    service: str,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    max_pool_connections: int = 32,
    connect_timeout: float = 2.0,
    read_timeout: float = 5.0,
) -> Any:
    kwargs: dict[str, Any] = {}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
        # Local endpoints (lobby fleetiq-local, moto) accept any credentials; a
        # laptop without an AWS profile should still be able to talk to them.
        if not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")):
            kwargs["aws_access_key_id"] = "local"
            kwargs["aws_secret_access_key"] = "local"
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
