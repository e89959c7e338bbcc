"""Fixtures running `python -m lobby.fleetiq_local` as a real subprocess.

Import the fixtures into a test module explicitly (they are not in conftest).
The server picks its own port (`--port 0`) and reports it on its readiness
line, so there is no window in which another process can take the port.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from lobby.aws import make_client
from tests.conftest import stop_process

READY_PREFIX = "FLEETIQ_LOCAL_LISTENING port="
STARTUP_TIMEOUT = 15.0
# Short enough that expiry tests stay fast, long enough that a claim followed
# immediately by a check is never racing the expiry on a loaded machine.
SHORT_CLAIM_TTL = 0.5
PREDECLARED_GROUP = "predeclared-group"

_REPO_ROOT = Path(__file__).resolve().parent.parent
_group_counter = itertools.count()


@dataclass
class FleetIQProcess:
    url: str
    port: int
    claim_ttl_seconds: float
    proc: subprocess.Popen[str]

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read() or b"{}")

    def inject_faults(self, faults: dict[str, list[dict[str, Any]]]) -> None:
        self._request("POST", "/_local/faults", faults)

    def clear_faults(self) -> None:
        self._request("DELETE", "/_local/faults")

    def faults_played_out(self) -> bool:
        """Every injected fault used and no faulted call still being served."""
        status = self._request("GET", "/_local/faults")
        return not status["queued"] and status["in_flight"] == 0


@contextmanager
def run_fleetiq_local(
    *, claim_ttl_seconds: float = 60.0, groups: tuple[str, ...] = (),
    health_ttl_seconds: float = 60.0, claim_rate: float = 0.0, claim_burst: int = 40,
) -> Iterator[FleetIQProcess]:
    cmd = [
        sys.executable, "-m", "lobby.fleetiq_local",
        "--port", "0",
        "--claim-ttl-seconds", str(claim_ttl_seconds),
        "--health-ttl-seconds", str(health_ttl_seconds),
        "--claim-rate-per-second", str(claim_rate), "--claim-burst", str(claim_burst),
    ]
    for group in groups:
        cmd += ["--group", group]
    env = dict(os.environ)
    # The subprocess must import this checkout even when lobby is not installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    # The server logs every call to stderr; a file never fills up and blocks
    # the server the way an unread pipe would.
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=_REPO_ROOT, env=env
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            # Keeps draining stdout after readiness for the same reason as stderr.
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, name="fleetiq-local-stdout", daemon=True).start()
        try:
            port = _wait_ready(lines, proc, stderr)
            yield FleetIQProcess(
                url=f"http://127.0.0.1:{port}",
                port=port,
                claim_ttl_seconds=claim_ttl_seconds,
                proc=proc,
            )
        finally:
            stop_process(proc)


@contextmanager
def fleetiq_with_servers(group: str, count: int, **options: Any) -> Iterator[FleetIQProcess]:
    """A fleetiq-local of its own (run_fleetiq_local's options) with `count` game
    servers registered in `group`."""
    with run_fleetiq_local(**options) as server:
        client = make_client("gamelift", endpoint_url=server.url)
        try:
            register_servers(client, group, count)
        finally:
            client.close()
        yield server


def _wait_ready(
    lines: queue.Queue[str | None], proc: subprocess.Popen[str], stderr: Any
) -> int:
    def fail(reason: str) -> NoReturn:
        stderr.seek(0)
        pytest.fail(f"fleetiq_local {reason}; stderr:\n{stderr.read()}", pytrace=False)

    try:
        while True:
            line = lines.get(timeout=STARTUP_TIMEOUT)
            if line is None:
                fail(f"exited with {proc.wait()} before becoming ready")
            if line.startswith(READY_PREFIX):
                return int(line[len(READY_PREFIX):].strip())
    except queue.Empty:
        fail(f"not ready within {STARTUP_TIMEOUT}s")


@pytest.fixture(scope="module")
def _fleetiq_long_ttl() -> Iterator[FleetIQProcess]:
    with run_fleetiq_local(claim_ttl_seconds=60.0, groups=(PREDECLARED_GROUP,)) as server:
        yield server


@pytest.fixture(scope="module")
def _fleetiq_short_ttl() -> Iterator[FleetIQProcess]:
    with run_fleetiq_local(claim_ttl_seconds=SHORT_CLAIM_TTL) as server:
        yield server


@pytest.fixture
def fleetiq_local(_fleetiq_long_ttl: FleetIQProcess) -> Iterator[FleetIQProcess]:
    """A shared server with 60 s claims; queued faults never leak between tests."""
    _fleetiq_long_ttl.clear_faults()
    yield _fleetiq_long_ttl
    _fleetiq_long_ttl.clear_faults()


@pytest.fixture
def fleetiq_local_short_ttl(_fleetiq_short_ttl: FleetIQProcess) -> Iterator[FleetIQProcess]:
    """A shared server whose claims expire after SHORT_CLAIM_TTL seconds."""
    _fleetiq_short_ttl.clear_faults()
    yield _fleetiq_short_ttl
    _fleetiq_short_ttl.clear_faults()


@pytest.fixture
def fleetiq_url(fleetiq_local: FleetIQProcess) -> str:
    return fleetiq_local.url


@pytest.fixture
def group_name() -> str:
    """A group no other test uses, so tests sharing a server stay independent."""
    return f"grp-{os.getpid()}-{next(_group_counter)}"


@pytest.fixture
def gamelift(fleetiq_url: str) -> Iterator[Any]:
    client = make_client("gamelift", endpoint_url=fleetiq_url)
    yield client
    client.close()


def instance_id(n: int) -> str:
    return f"i-{n:017d}"


def register_servers(
    client: Any, group: str, count: int, *, start: int = 0, connection_info: bool = True
) -> list[str]:
    ids = []
    for n in range(start, start + count):
        server_id = f"gs-{n:04d}"
        kwargs: dict[str, Any] = {}
        if connection_info:
            kwargs["ConnectionInfo"] = f"10.0.{n // 256}.{n % 256}:6060"
        client.register_game_server(
            GameServerGroupName=group, GameServerId=server_id, InstanceId=instance_id(n), **kwargs
        )
        ids.append(server_id)
    return ids
