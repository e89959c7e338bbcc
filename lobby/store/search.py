"""Session search: the attribute index tokens both stores share.

Equality filters on indexed attribute keys are index lookups: each listed
session is in one index per indexed attribute, named by the token of the
key's value. prelude.lua's attr_token() spells tokens the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from lobby.errors import ErrorCode, LobbyError

if TYPE_CHECKING:
    from lobby.session import SessionRecord

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


# Records a node keeps decoded, with their browser view (RecordCache): ~5 KB each.
RECORD_CACHE_SIZE = 4096


class RecordCache:
    """list_sessions pages, decoded once per record text.

    Browsers page through the same rooms over and over (the first pages of the
    popular filters), and a room's stored text changes only when the room does.
    Decoding a page of records and encoding their views cost a node more than
    everything else in a list request (docs/benchmarks.md), so both are kept by
    the record's exact stored text, least recently used out first: a changed
    room is a new text, so nothing stale is ever shown. The records handed out
    are shared between requests: read them, never change them.
    """

    def __init__(self, size: int = RECORD_CACHE_SIZE) -> None:
        self.size = size
        # text -> [record, its view's JSON or None]; and the same entries by the
        # record's id(), which stays unique while the entry holds the record.
        self._by_text: dict[bytes, list[Any]] = {}
        self._by_id: dict[int, list[Any]] = {}
        self.hits = 0
        self.misses = 0

    def records(self, texts: Iterable[bytes]) -> list[SessionRecord]:
        out: list[SessionRecord] = []
        by_text = self._by_text
        for text in texts:
            entry = by_text.pop(text, None)
            if entry is None:
                self.misses += 1
                entry = [json.loads(text), None]
                self._by_id[id(entry[0])] = entry
                if len(by_text) >= self.size:
                    oldest = by_text.pop(next(iter(by_text)))
                    del self._by_id[id(oldest[0])]
            else:
                self.hits += 1
            by_text[text] = entry  # (re)inserted last: the most recently used
            out.append(entry[0])
        return out

    def view(self, record: SessionRecord, render: Callable[[SessionRecord], str]) -> str:
        """render(record), once per cached record (records not from records():
        rendered every time)."""
        entry = self._by_id.get(id(record))
        if entry is None or entry[0] is not record:
            return render(record)
        if entry[1] is None:
            entry[1] = render(record)
        text: str = entry[1]
        return text


# One per process: entries are keyed by content, so nodes and stores can share it.
LISTED = RecordCache()
