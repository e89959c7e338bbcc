"""AWS test fixtures: a real moto server in a subprocess (no in-process mocks).

Kept out of conftest.py on purpose; a test module opts in with
`from tests.aws_fixtures import moto_endpoint, free_port, dead_endpoint`.
Server mode means boto3 goes through real HTTP, serialization and error
parsing, the same code paths it takes against AWS.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import free_port, stop_process

STARTUP_DEADLINE_S = 20.0




def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP status means the server is up
    except OSError:
        return False


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of a moto server started once per test session."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    # A file, not a pipe: an unread pipe could fill up and stall the server.
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
        try:
            deadline = time.monotonic() + STARTUP_DEADLINE_S
            while not _answers(url):
                if proc.poll() is not None:
                    out.seek(0)
                    pytest.fail(f"moto server exited ({proc.returncode}): {out.read()[-2000:]!r}")
                if time.monotonic() > deadline:
                    out.seek(0)
                    pytest.fail(f"moto server not up after {STARTUP_DEADLINE_S}s: "
                                f"{out.read()[-2000:]!r}")
                time.sleep(0.05)
            yield url
        finally:
            stop_process(proc)


@pytest.fixture
def dead_endpoint() -> str:
    """An endpoint URL whose port refuses connections."""
    return f"http://127.0.0.1:{free_port()}"
