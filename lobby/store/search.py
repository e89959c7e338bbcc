"""Session search: the attribute index tokens both stores share.

Equality filters on indexed attribute keys are index lookups: each listed
session is in one index per indexed attribute, named by the token of the
key's value. prelude.lua's attr_token() spells tokens the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

ALL_KEYS = "*"


def attr_token(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"{key}=b:{1 if value else 0}"
    if isinstance(value, str):
        return f"{key}=s:{value}"
    return f"{key}=n:{value:.14g}"


def index_tokens(attrs: dict[str, Any], indexed: Iterable[str] | None) -> dict[str, bool]:
    """The index entries of a session with these attributes (None: every key indexed)."""
    keys = None if indexed is None else set(indexed)
    return {attr_token(k, v): True for k, v in attrs.items() if keys is None or k in keys}


def merge_attrs(
    attrs: dict[str, Any] | None, update: dict[str, Any], limit: int
) -> dict[str, Any] | None:
    """Mirrors merge_attrs() in prelude.lua: null deletes; None past the limit."""
    out = dict(attrs or {})
    for k, v in update.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out if len(out) <= limit else None
