"""Session search: the attribute index tokens both stores share.

Equality filters on indexed attribute keys are index lookups: each listed
session is in one index per indexed attribute, named by the token of the
key's value. prelude.lua's attr_token() spells tokens the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lobby.errors import ErrorCode, LobbyError

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


# What a page of list_sessions may cost, and how long a player-count order holds.
# Both stores walk the same candidates in the same order, so they give the same pages.
SCAN_BUDGET = 500  # candidate sessions examined per page at most
SNAPSHOT_MAX = 200  # candidates a most_players / fewest_players order is taken over
SNAPSHOT_MS = 60_000  # how long such an order (and its cursor) lives
PLAYER_SORTS = ("most_players", "fewest_players")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "b"
    if isinstance(value, str):
        return "s"
    return "n"


def _same(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) and a == b


def holds(attrs: dict[str, Any], key: str, op: str, want: Any) -> bool:
    """One filter condition (mirrors holds() in list.lua). A missing key matches
    only `ne`; the range operators compare numbers only."""
    value = attrs.get(key)
    if op == "eq":
        return value is not None and _same(value, want)
    if op == "ne":
        return value is None or not _same(value, want)
    if op == "in":
        return value is not None and any(_same(value, w) for w in want)
    if value is None or _kind(value) != "n":
        return False
    if op == "lt":
        return bool(value < want)
    if op == "le":
        return bool(value <= want)
    if op == "gt":
        return bool(value > want)
    return bool(value >= want)


def is_driver(key: str, op: str, indexed: tuple[str, ...] | list[str] | None) -> bool:
    """Conditions answered by an index lookup: eq and in on indexed keys."""
    return op in ("eq", "in") and (indexed is None or key in indexed)


def cursor_position(cursor: str | None, sort: str) -> tuple[str, int] | None:
    """parse_cursor, with a bad cursor as the protocol's BAD_REQUEST."""
    try:
        return parse_cursor(cursor, sort)
    except ValueError:
        raise LobbyError(ErrorCode.BAD_REQUEST, "cursor: not a cursor from list_sessions "
                         "with this sort") from None


def parse_cursor(cursor: str | None, sort: str) -> tuple[str, int] | None:
    """("seq", seq) or ("snap:TOKEN", offset) or None for the first page; ValueError
    when it is not a cursor that list_sessions gives for this sort."""
    if not cursor:
        return None
    if sort in PLAYER_SORTS:
        token, sep, offset = cursor[1:].partition(".")
        if (cursor[0] != "p" or not sep or not token.isalnum() or not token.isascii()
                or not (offset.isascii() and offset.isdigit()) or len(offset) > 9):
            raise ValueError("not a cursor of this sort")
        return "snap:" + token, int(offset)
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) < 19):
        raise ValueError("not a cursor of this sort")
    return "seq", int(cursor)
