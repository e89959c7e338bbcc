"""`lobby schema`: the wire protocol as JSON Schema 2020-12 and AsyncAPI 3, from the models.

Both documents are generated from the pydantic models (requests in `protocol.py`,
replies and events in `messages.py`) and committed under `schema/`; the suite fails
when the committed files differ from what this writes, so a model change without
`lobby schema` is caught. Client authors generate types from `lobby.schema.json`
(one `$defs` entry per message, each with a `type` const to discriminate on).
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from lobby import messages, protocol

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schema"
JSON_SCHEMA_FILE = "lobby.schema.json"
ASYNCAPI_FILE = "asyncapi.yaml"
SCHEMA_ID = "urn:lobby:protocol:v1"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def request_models() -> list[type[BaseModel]]:
    """The members of `protocol.Request`, the union the server parses every frame with."""
    union = typing.get_args(protocol.Request)[0]
    return list(typing.get_args(union))


def _camel(rtype: str) -> str:
    return "".join(part.capitalize() for part in rtype.split("_"))


def message_defs() -> dict[str, tuple[str, type[BaseModel]]]:
    """`$defs` name -> (direction, model), for every message of the protocol."""
    out: dict[str, tuple[str, type[BaseModel]]] = {}
    for model in request_models():
        out[_camel(messages.message_type(model)) + "Request"] = ("request", model)
    for model in messages.REPLY_MODELS:
        out[model.__name__] = ("reply", model)
    out["ErrorReply"] = ("reply", messages.ErrorReply)
    for model in messages.EVENT_MODELS:
        out[model.__name__] = ("event", model)
    return out


def _rename_refs(node: Any, names: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            k: ("#/$defs/" + names.get(v.rsplit("/", 1)[1], v.rsplit("/", 1)[1])
                if k == "$ref" and isinstance(v, str) else _rename_refs(v, names))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rename_refs(v, names) for v in node]
    return node


def _untitled(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _untitled(v) for k, v in node.items()
                if not (k == "title" and isinstance(v, str))}
    if isinstance(node, list):
        return [_untitled(v) for v in node]
    return node


def _union(names: list[str], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "oneOf": [{"$ref": f"#/$defs/{n}"} for n in names],
    }


def json_schema() -> dict[str, Any]:
    """The whole protocol as one JSON Schema 2020-12 document."""
    defs_by_name = message_defs()
    # Requests are described as the server validates them, frames as they are sent.
    refs, top = models_json_schema(
        [(m, "validation" if direction == "request" else "serialization")
         for direction, m in defs_by_name.values()],
        ref_template="#/$defs/{model}",
    )
    generated: dict[str, Any] = top.get("$defs", {})
    # pydantic names each definition after its class: requests get a Request suffix
    # (protocol.Hello -> HelloRequest) so every message has one clear name.
    names: dict[str, str] = {}
    for name, (_, model) in defs_by_name.items():
        mode = "validation" if defs_by_name[name][0] == "request" else "serialization"
        pyd_name = refs[(model, mode)]["$ref"].rsplit("/", 1)[1]  # type: ignore[index]
        names[pyd_name] = name
    defs = {names.get(k, k): _rename_refs(v, names) for k, v in generated.items()}
    # pydantic titles every field ("Player Id"); code generators turn each into a
    # type alias of its own (PlayerId2, Type15). Only the definitions keep a title.
    defs = {k: {**_untitled(v), **({"title": v["title"]} if "title" in v else {})}
            for k, v in defs.items()}
    for name in defs_by_name:
        # The discriminator: every message has a `type` (a const, but for ErrorReply,
        # whose type echoes the refused request's).
        defs[name]["title"] = name
    by_dir: dict[str, list[str]] = {"request": [], "reply": [], "event": []}
    for name, (direction, _) in defs_by_name.items():
        by_dir[direction].append(name)
    ok_replies = [n for n in by_dir["reply"] if n != "ErrorReply"]
    defs["ClientMessage"] = _union(
        by_dir["request"], "A frame a client sends: one request, told apart by `type`.")
    defs["Reply"] = _union(
        [*ok_replies, "ErrorReply"],
        "The answer to one request: `ok` true (told apart by `type`) or false (ErrorReply).")
    defs["Event"] = _union(
        by_dir["event"], "A push without a request: no `ok` key, told apart by `type`.")
    defs["Event"]["not"] = {"required": ["ok"]}
    defs["ServerMessage"] = {
        "description": "A frame the server sends: a Reply (has `ok`) or an Event (has none).",
        "oneOf": [{"$ref": "#/$defs/Reply"}, {"$ref": "#/$defs/Event"}],
    }
    return {
        "$schema": DIALECT,
        "$id": SCHEMA_ID,
        "title": "lobby wire protocol v1",
        "description": (
            "Every WebSocket frame of the lobby protocol (protocol.md), generated from "
            "the server's models by `lobby schema`. Each frame is one JSON object; "
            "requests and their replies share the `type` value; events have no `ok`."
        ),
        "oneOf": [{"$ref": "#/$defs/ClientMessage"}, {"$ref": "#/$defs/ServerMessage"}],
        "$defs": dict(sorted(defs.items())),
    }


def strict(schema: Any) -> Any:
    """The schema with no unknown fields allowed in any object: what the suite holds
    the server's own frames to (clients, by the protocol's rules, accept extra ones)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def asyncapi() -> dict[str, Any]:
    """An AsyncAPI 3.0 document of the lobby's one WebSocket channel."""
    defs_by_name = message_defs()
    payload_format = "application/schema+json;version=draft-2020-12"
    messages_: dict[str, Any] = {}
    for name, (direction, model) in defs_by_name.items():
        doc = (model.__doc__ or "").strip().split("\n\n")[0]
        if doc.startswith(("Usage docs", "!!!")) or model.__doc__ == BaseModel.__doc__:
            doc = ""
        entry: dict[str, Any] = {
            "name": name,
            "title": f"{messages.message_type(model) if name != 'ErrorReply' else 'error'}"
                     f" {direction}",
            "payload": {"schemaFormat": payload_format,
                        "schema": {"$ref": f"{JSON_SCHEMA_FILE}#/$defs/{name}"}},
        }
        if doc:
            entry["summary"] = " ".join(doc.split())
        messages_[name] = entry
    channel_messages = {n: {"$ref": f"#/components/messages/{n}"} for n in messages_}
    operations: dict[str, Any] = {}
    replies = {messages.message_type(m): n for n, (d, m) in defs_by_name.items()
               if d == "reply" and n != "ErrorReply"}
    for name, (direction, model) in defs_by_name.items():
        mtype = messages.message_type(model) if name != "ErrorReply" else None
        if direction == "request":
            reply_msgs = [{"$ref": "#/channels/lobby/messages/ErrorReply"}]
            if mtype in replies:
                reply_msgs.insert(0, {"$ref": f"#/channels/lobby/messages/{replies[mtype]}"})
            operations[_camel(mtype or "").lower()[:1] + _camel(mtype or "")[1:]] = {
                "action": "receive",
                "summary": f"The client sends `{mtype}`; exactly one reply comes back.",
                "channel": {"$ref": "#/channels/lobby"},
                "messages": [{"$ref": f"#/channels/lobby/messages/{name}"}],
                "reply": {"channel": {"$ref": "#/channels/lobby"}, "messages": reply_msgs},
            }
        elif direction == "event":
            op = "push" + _camel(mtype or "")
            operations[op] = {
                "action": "send",
                "summary": f"The server pushes `{mtype}` to the members of a session.",
                "channel": {"$ref": "#/channels/lobby"},
                "messages": [{"$ref": f"#/channels/lobby/messages/{name}"}],
            }
    return {
        "asyncapi": "3.0.0",
        "id": SCHEMA_ID,
        "info": {
            "title": "lobby",
            "version": "1",
            "description": (
                "The lobby server's WebSocket protocol (protocol.md is the prose contract). "
                "Generated by `lobby schema` from the server's models; the message payloads "
                f"are the JSON Schema 2020-12 definitions of {JSON_SCHEMA_FILE}."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {"host": "localhost:8080", "protocol": "ws", "pathname": "/ws",
                      "description": "`lobby serve` with its defaults"},
        },
        "channels": {
            "lobby": {
                "address": "/ws",
                "title": "the lobby socket",
                "description": (
                    "One WebSocket per player, UTF-8 text frames, one JSON object each. "
                    "`hello` first; every request gets exactly one reply with its `id`; "
                    "events (no `ok`) arrive in between."
                ),
                "messages": channel_messages,
            },
        },
        "operations": operations,
        "components": {"messages": messages_},
    }


# --- writing ---------------------------------------------------------------------


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    # JSON strings are valid YAML double-quoted scalars.
    return json.dumps(str(value), ensure_ascii=False)


def to_yaml(node: Any, indent: int = 0) -> str:
    """A small YAML emitter for JSON-like data (no dependency for one generated file)."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            k = _yaml_scalar(key) if not str(key).replace("_", "").isalnum() else str(key)
            if isinstance(value, dict | list) and value:
                lines.append(f"{pad}{k}:")
                lines.append(to_yaml(value, indent + 1))
            else:
                lines.append(f"{pad}{k}: {_yaml_empty(value)}")
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict | list) and item:
                inner = to_yaml(item, indent + 1).lstrip(" ")
                lines.append(f"{pad}- {inner}")
            else:
                lines.append(f"{pad}- {_yaml_empty(item)}")
    return "\n".join(lines)


def _yaml_empty(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _yaml_scalar(value)


def rendered() -> dict[str, str]:
    """File name -> content, exactly as `lobby schema` writes them."""
    header = "# Generated by `lobby schema` from lobby/protocol.py and lobby/messages.py.\n"
    header += "# Do not edit: change the models and run `lobby schema`.\n"
    return {
        JSON_SCHEMA_FILE: json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n",
        ASYNCAPI_FILE: header + to_yaml(asyncapi()) + "\n",
    }


def write(out_dir: Path = SCHEMA_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered().items():
        path = out_dir / name
        path.write_text(text, "utf-8")
        written.append(path)
    return written


def stale(out_dir: Path = SCHEMA_DIR) -> list[str]:
    """The files under out_dir that differ from what `lobby schema` would write."""
    out = []
    for name, text in rendered().items():
        path = out_dir / name
        if not path.is_file() or path.read_text("utf-8") != text:
            out.append(name)
    return out
