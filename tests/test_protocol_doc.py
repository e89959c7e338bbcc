"""protocol.md is the clients' contract: everything the code speaks is documented there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lobby import protocol
from lobby.errors import ErrorCode
from lobby.http import HTTP_ERROR_CODES

DOC = (Path(__file__).resolve().parent.parent / "protocol.md").read_text("utf-8")


@pytest.mark.parametrize("rtype", protocol.REQUEST_TYPES)
def test_every_request_type_has_a_section_and_example(rtype: str) -> None:
    assert f"### `{rtype}`" in DOC
    assert f'{{"type": "{rtype}", "id": ' in DOC


@pytest.mark.parametrize("etype", protocol.EVENT_TYPES)
def test_every_event_is_documented(etype: str) -> None:
    assert f'{{"type": "{etype}", "session_id": ' in DOC
    assert f"| `{etype}` |" in DOC


@pytest.mark.parametrize("code", [c.value for c in ErrorCode])
def test_every_error_code_is_documented(code: str) -> None:
    assert f"| `{code}` |" in DOC


@pytest.mark.parametrize("reason", protocol.LEAVE_REASONS + protocol.CLOSE_REASONS)
def test_leave_reasons_are_documented(reason: str) -> None:
    assert f"`{reason}`" in DOC


def test_pasteable_examples_are_valid_requests() -> None:
    """Every single-line request example parses as the request it documents."""
    examples = re.findall(r'^(\{"type": "[a-z_]+", "id": \d+.*\})$', DOC, flags=re.M)
    assert len(examples) >= len(protocol.REQUEST_TYPES)
    for line in examples:
        msg = json.loads(line)
        if msg["type"] in protocol.EVENT_TYPES:
            continue
        req = protocol.parse_request(line)
        assert req.type == msg["type"]


@pytest.mark.parametrize("code", HTTP_ERROR_CODES)
def test_every_http_error_code_is_documented(code: str) -> None:
    http_section = DOC.split("## Game-server HTTP API", 1)[1].split("\n## ", 1)[0]
    assert f"| `{code}` |" in http_section
