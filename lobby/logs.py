"""Log set-up of `lobby serve`: plain text for a terminal, JSON lines for a log stack.

Call sites pass structured fields with `extra=fields(conn=..., session=...)`; the
text format shows the message alone (it already reads well), the JSON format
adds each field to the line's object, so a log stack can filter by player or
session without parsing messages.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
# The structured fields a line may carry (JSON keys, in this order).
FIELDS = ("conn", "player", "session", "request", "code", "latency_ms", "reason", "remote",
          "state", "server", "endpoint", "outcome", "count")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call; None values are left out."""
    return {k: v for k, v in values.items() if v is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, node, message, then fields."""

    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "node": getattr(record, "node", None) or self.node,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure(level: str, fmt: str, node: str | None = None, tag_node: bool = False) -> None:
    """`tag_node`: text lines name the node too (several processes share stderr:
    `lobby serve --workers`)."""
    handler = logging.StreamHandler(sys.stderr)
    text = _TEXT_FORMAT.replace("%(name)s", f"[{node}] %(name)s") if tag_node and node \
        else _TEXT_FORMAT
    handler.setFormatter(JsonFormatter(node) if fmt == "json" else logging.Formatter(text))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # websockets logs every open and close at INFO, and a traceback per failed
    # handshake: the lobby logs connections itself, once each.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
