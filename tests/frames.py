"""Every frame the server sends during the suite is checked against the schema.

The test clients (conftest's Player, lobby.client in its tests) call
`check_server_frame` on each frame they receive. The schema is the one `lobby schema`
generates from the models, made strict (no field a model does not list): a reply or
event the server sends must be described in lobby/messages.py, field for field.

The one tolerance is explicit: a frame whose `type` has no model is reported with
what to do (add the model, run `lobby schema`), not silently let through.
"""

from __future__ import annotations

import functools
from typing import Any

from jsonschema import Draft202012Validator

from lobby import messages, schema


class FrameError(AssertionError):
    pass


@functools.cache
def _defs() -> dict[str, Any]:
    return schema.strict(schema.json_schema())["$defs"]


@functools.cache
def validator(defname: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/$defs/{defname}", "$defs": _defs()})


def _camel(rtype: str) -> str:
    return "".join(part.capitalize() for part in str(rtype).split("_"))


def model_for(msg: dict[str, Any]) -> str:
    """The $defs name a server frame must match; FrameError when there is none."""
    mtype = msg.get("type")
    if "ok" in msg:
        if msg["ok"] is False:
            return "ErrorReply"
        if mtype not in messages.REPLIES:
            raise FrameError(
                f"the server sent an ok reply of type {mtype!r}, which has no reply model. "
                f"Add `class {_camel(mtype)}Reply(_Reply)` to REPLY_MODELS in "
                "lobby/messages.py (and its request model to protocol.Request), then run "
                f"`lobby schema` and commit schema/. Frame: {msg}"
            )
        return messages.REPLIES[mtype].__name__
    if mtype not in messages.EVENTS:
        raise FrameError(
            f"the server sent an event of type {mtype!r}, which has no event model. "
            f"Add `class {_camel(mtype)}Event(_Event)` to EVENT_MODELS in "
            f"lobby/messages.py, then run `lobby schema` and commit schema/. Frame: {msg}"
        )
    return messages.EVENTS[mtype].__name__


def check_server_frame(msg: Any) -> None:
    """Raise FrameError unless `msg` (a decoded frame) matches its model exactly."""
    if not isinstance(msg, dict):
        raise FrameError(f"the server sent a frame that is not a JSON object: {msg!r}")
    name = model_for(msg)
    errors = sorted(validator(name).iter_errors(msg), key=lambda e: list(e.absolute_path))
    if errors:
        detail = "; ".join(
            f"{'/'.join(str(p) for p in e.absolute_path) or '(frame)'}: {e.message}"
            for e in errors[:3]
        )
        raise FrameError(
            f"the server's {msg.get('type')!r} frame does not match {name} "
            f"(lobby/messages.py): {detail}. Change the model (or the server), then run "
            f"`lobby schema` and commit schema/. Frame: {msg}"
        )


class FrameLog:
    """Collects failures from reader tasks (which must not die) for the test to raise."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        # A broadcast reaches every member as the same text: check it once.
        self._seen: set[str | bytes] = set()

    def check(self, msg: Any, raw: str | bytes | None = None) -> None:
        if raw is not None and raw in self._seen:
            return
        try:
            check_server_frame(msg)
        except FrameError as exc:
            self.errors.append(str(exc))
            return
        if raw is not None:
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen.add(raw)


SENT_FRAMES = FrameLog()
