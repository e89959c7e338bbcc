"""The machine-readable protocol: schema/ is what `lobby schema` generates from the
models, the documents are well formed, protocol.md's example frames validate, and
the check every test client runs on the server's frames catches what it should."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator, validators

from lobby import messages, protocol, schema
from tests.frames import FrameError, check_server_frame, validator

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = ROOT / "schema"
DOC = (ROOT / "protocol.md").read_text("utf-8")
README = (ROOT / "README.md").read_text("utf-8")


def test_committed_schema_files_are_the_generated_ones() -> None:
    stale = schema.stale(SCHEMA_DIR)
    assert not stale, (
        f"schema/{', schema/'.join(stale)} differ from the models: run `lobby schema` "
        "(or .venv/bin/lobby schema) and commit schema/"
    )


def test_lobby_schema_command_writes_and_checks(tmp_path: Path) -> None:
    lobby = [sys.executable, "-m", "lobby.cli", "schema", "--out", str(tmp_path)]
    run = subprocess.run(lobby, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    for name in (schema.JSON_SCHEMA_FILE, schema.ASYNCAPI_FILE):
        assert (tmp_path / name).read_text("utf-8") == (SCHEMA_DIR / name).read_text("utf-8")
    check = subprocess.run([*lobby, "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    (tmp_path / schema.JSON_SCHEMA_FILE).write_text("{}\n")
    check = subprocess.run([*lobby, "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 1
    assert "lobby.schema.json is stale: run `lobby schema`" in check.stderr


def test_json_schema_is_2020_12_with_one_def_per_message() -> None:
    doc = json.loads((SCHEMA_DIR / schema.JSON_SCHEMA_FILE).read_text("utf-8"))
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(doc)
    defs = doc["$defs"]
    for rtype in protocol.REQUEST_TYPES:
        camel = "".join(p.capitalize() for p in rtype.split("_"))
        assert defs[f"{camel}Request"]["properties"]["type"]["const"] == rtype
        assert defs[f"{camel}Reply"]["properties"]["type"]["const"] == rtype
        assert defs[f"{camel}Reply"]["properties"]["ok"]["const"] is True
    for etype in protocol.EVENT_TYPES:
        camel = "".join(p.capitalize() for p in etype.split("_"))
        event = defs[f"{camel}Event"]
        assert event["properties"]["type"]["const"] == etype
        assert "ok" not in event["properties"]
    assert defs["ErrorReply"]["properties"]["ok"]["const"] is False
    codes = defs["ErrorCode"]["enum"]
    assert sorted(codes) == sorted(c.value for c in protocol.ErrorCode)
    # Every request, reply and event is one entry of the unions, which are told apart
    # by `type` (and by `ok` between replies and events).
    client = {r["$ref"].split("/")[-1] for r in defs["ClientMessage"]["oneOf"]}
    assert client == {n for n, (d, _) in schema.message_defs().items() if d == "request"}
    assert len(defs["Reply"]["oneOf"]) == len(protocol.REQUEST_TYPES) + 1


def test_every_protocol_type_has_its_models() -> None:
    """protocol.py's type lists, the request union and messages.py agree."""
    requests = {messages.message_type(m) for m in schema.request_models()}
    assert requests == set(protocol.REQUEST_TYPES)
    missing_replies = set(protocol.REQUEST_TYPES) - set(messages.REPLIES)
    assert not missing_replies, (
        f"no reply model for {sorted(missing_replies)}: add it to REPLY_MODELS in "
        "lobby/messages.py and run `lobby schema`")
    assert set(messages.REPLIES) <= set(protocol.REQUEST_TYPES)
    assert set(messages.EVENTS) == set(protocol.EVENT_TYPES), (
        "EVENT_MODELS in lobby/messages.py and protocol.EVENT_TYPES differ: add the model "
        "and run `lobby schema`")


def test_asyncapi_document_is_valid_asyncapi_3() -> None:
    """Against the AsyncAPI 3.0.0 schema of @asyncapi/specs (tests/data/README.md)."""
    spec = json.loads(gzip.decompress((ROOT / "tests/data/asyncapi-3.0.0.schema.json.gz")
                                      .read_bytes()))
    doc = yaml.safe_load((SCHEMA_DIR / schema.ASYNCAPI_FILE).read_text("utf-8"))
    check = validators.validator_for(spec)(spec)
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in check.iter_errors(doc)]
    assert errors == []
    del doc["operations"]["hello"]["action"]  # and it does catch a broken document
    assert list(check.iter_errors(doc))


def test_asyncapi_document_describes_the_channel() -> None:
    text = (SCHEMA_DIR / schema.ASYNCAPI_FILE).read_text("utf-8")
    doc = yaml.safe_load(text)
    assert doc["asyncapi"] == "3.0.0"
    assert doc["servers"]["local"]["protocol"] == "ws"
    channel = doc["channels"]["lobby"]
    assert channel["address"] == "/ws"
    json_doc = json.loads((SCHEMA_DIR / schema.JSON_SCHEMA_FILE).read_text("utf-8"))

    def resolve(ref: str, root: dict[str, Any]) -> Any:
        node: Any = root
        for part in ref.split("#/", 1)[1].split("/"):
            node = node[part]
        return node

    for name, message in doc["components"]["messages"].items():
        ref = message["payload"]["schema"]["$ref"]
        assert ref.startswith("lobby.schema.json#/$defs/")
        assert resolve(ref, json_doc)["title"] == name
        assert resolve(channel["messages"][name]["$ref"], doc) is message
    assert set(doc["components"]["messages"]) == set(schema.message_defs())
    ops = doc["operations"]
    for rtype in protocol.REQUEST_TYPES:
        camel = "".join(p.capitalize() for p in rtype.split("_"))
        op = ops[camel[0].lower() + camel[1:]]
        assert op["action"] == "receive"
        assert [m["$ref"].split("/")[-1] for m in op["reply"]["messages"]] == [
            f"{camel}Reply", "ErrorReply"]
        for ref in [m["$ref"] for m in op["messages"] + op["reply"]["messages"]]:
            resolve(ref, doc)
    for etype in protocol.EVENT_TYPES:
        camel = "".join(p.capitalize() for p in etype.split("_"))
        assert ops[f"push{camel}"]["action"] == "send"


# --- protocol.md's examples -----------------------------------------------------------


def _session_example() -> dict[str, Any]:
    block = DOC.split("## The session object", 1)[1].split("```json\n", 1)[1].split("```")[0]
    return json.loads(block)


def doc_frames(text: str) -> list[dict[str, Any]]:
    """Every JSON frame in the ```json blocks of `text`; `{…}` is the session example."""
    session = json.dumps(_session_example())
    frames = []
    for block in re.findall(r"^```json\n(.*?)^```", text, re.M | re.S):
        try:
            frames.append(json.loads(block))
            continue
        except json.JSONDecodeError:
            pass
        for line in block.splitlines():
            if "...result fields" in line:
                continue  # the reply template of "Requests and replies", not a frame
            frames.append(json.loads(line.replace("{…}", session)))
    return frames


def wscat_frames(text: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(sent, received) frames of the README's wscat transcript."""
    sent = [json.loads(m) for m in re.findall(r"^> (\{.*\})$", text, re.M)]
    received = [json.loads(m) for m in re.findall(r"^< (\{.*\})$", text, re.M)]
    return sent, received


def test_every_example_frame_of_protocol_md_validates() -> None:
    frames = doc_frames(DOC)
    session = _session_example()
    validator("Session").validate(session)
    kinds = {"request": 0, "reply": 0, "event": 0}
    for frame in frames:
        if frame is session or frame == session:
            continue
        if "ok" in frame:
            check_server_frame(frame)
            kinds["reply"] += 1
        elif frame.get("type") in protocol.EVENT_TYPES:
            check_server_frame(frame)
            kinds["event"] += 1
        else:
            errors = list(validator("ClientMessage").iter_errors(frame))
            assert not errors, (frame, [e.message for e in errors])
            protocol.parse_request(json.dumps(frame))  # and the server agrees
            kinds["request"] += 1
    assert kinds["request"] >= len(protocol.REQUEST_TYPES)
    assert kinds["event"] >= len(protocol.EVENT_TYPES)
    assert kinds["reply"] >= 3


def test_readme_wscat_transcript_validates() -> None:
    sent, received = wscat_frames(README)
    assert len(sent) >= 7 and len(received) >= 10
    for frame in sent:
        assert not list(validator("ClientMessage").iter_errors(frame)), frame
    for frame in received:
        check_server_frame(frame)


# --- the check of sent frames is honest -----------------------------------------------

SESSION = {
    "session_id": "s", "name": "n", "host_id": "p_a", "session_state": "WAITING",
    "player_count": 1, "max_players": 4, "connected_players": ["p_a"],
    "players": [{"player_id": "p_a", "name": "alice", "attributes": {}, "ready": False,
                 "connected": True}], "has_password": False,
    "server_id": None, "server_endpoint": None, "created_at": 1.5, "version": 1,
    "attributes": {"mode": "ctf", "skill": 2.5, "ranked": True}, "visibility": "public",
    "locked": False, "join_code": None, "start_rule": "host", "min_players": 1,
}


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        ({"type": "dance", "session_id": "s"}, "add `class DanceEvent(_Event)` to EVENT_MODELS"),
        ({"type": "dance", "id": 1, "ok": True}, "add `class DanceReply(_Reply)` to REPLY_MODELS"),
        ({"type": "kicked", "session_id": "s", "extra": 1}, "'extra' was unexpected"),
        ({"type": "player_joined", "session_id": "s", "player_id": "p", "name": "b",
          "session": {**SESSION, "ready": True}}, "'ready' was unexpected"),
        ({"type": "host_changed", "session_id": "s", "session": SESSION}, "'host_id'"),
        ({"type": "session_closed", "session_id": "s", "reason": "bored"}, "'bored'"),
        ({"type": "ping", "id": 1, "ok": False, "error": {"code": "NOPE", "message": ""}},
         "'NOPE'"),
        ({"type": "join_ticket", "id": 1, "ok": True, "ticket": "t", "server_endpoint": "e",
          "expires_at": "soon"}, "'soon'"),
    ],
)
def test_frame_check_refuses(frame: dict[str, Any], says: str) -> None:
    with pytest.raises(FrameError) as err:
        check_server_frame(frame)
    assert says.lower() in str(err.value).lower()
    assert "lobby schema" in str(err.value)


def test_frame_check_accepts_real_shapes() -> None:
    check_server_frame({"type": "kicked", "session_id": "s"})
    check_server_frame({"type": "error", "id": None, "ok": False,
                        "error": {"code": "BAD_REQUEST", "message": "frame is not a JSON object"}})
    check_server_frame({"type": "hello", "id": "a", "ok": True, "player_id": "p", "name": "x",
                        "resume_token": "p.t", "resumed": True, "session": SESSION,
                        "chat": []})
