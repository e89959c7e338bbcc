"""Wire messages: request models, reply/event builders, and request parsing.

protocol.md is the contract; this module is its executable form. A test checks
that every request and event type named here is documented there.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)

from lobby import fastjson
from lobby.errors import ErrorCode, LobbyError

# Bounds on client-supplied values: a lobby's fields are short, and every byte a
# client can make us store or echo to other players is a byte of abuse surface.
MAX_NAME_CHARS = 64
MAX_ID_CHARS = 64
MAX_PASSWORD_CHARS = 128
MAX_TOKEN_CHARS = 512
MAX_JWT_CHARS = 8192  # identity providers' tokens run to a few KiB (Cognito ID tokens: ~1.5)
MAX_CURSOR_CHARS = 64
MAX_CHAT_CHARS = 500

RequestId = int | Annotated[str, Field(max_length=MAX_ID_CHARS)] | None
# Names are shown to other players, so they must not be able to hide or disguise
# text: controls (Cc, incl. U+0085), format characters (Cf: bidi overrides such as
# U+202E, zero-width characters), line/paragraph separators (Zl, Zp) and lone
# surrogates are refused, and so are names with nothing visible (only whitespace,
# combining marks or blank-looking letters such as U+3164).
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_BLANK_LOOKING = frozenset("\u115f\u1160\u2800\u3164\uffa0")


def check_name(value: str) -> str:
    """A display name (player or session) in NFC, or ValueError saying why not."""
    value = unicodedata.normalize("NFC", value)
    if len(value) > MAX_NAME_CHARS:
        raise ValueError(f"must have at most {MAX_NAME_CHARS} characters")
    visible = False
    for ch in value:
        category = unicodedata.category(ch)
        if category in _FORBIDDEN_CATEGORIES:
            raise ValueError(
                f"must not contain U+{ord(ch):04X} (a control, format or separator character)")
        if not (ch.isspace() or category[0] == "M" or ch in _BLANK_LOOKING):
            visible = True
    if not visible:
        raise ValueError("must have a visible character")
    return value


# max_length here is a cheap bound before normalising; check_name bounds the result.
Name = Annotated[
    str, Field(min_length=1, max_length=MAX_NAME_CHARS * 4), AfterValidator(check_name)]


def _integral(value: Any) -> Any:
    """Game engines' JSON writers emit every number as a float (Godot: 4.0): an
    integral float is the integer it spells; 4.5 and true are left for the strict
    int check to refuse."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer where the protocol wants one, also when written as an integral float.
Int = Annotated[int, BeforeValidator(_integral)]

# Attributes: a game's description of a room (mode, map, region, skill) and of a
# player. Keys are identifiers so that they can name search indexes; values are
# what a search can compare.
MAX_SESSION_ATTRIBUTES = 16
MAX_PLAYER_ATTRIBUTES = 8
MAX_IN_VALUES = 10
_ATTR_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Lua's cjson writes numbers with 14 significant digits: attribute numbers are
# kept to those digits so that both stores hold (and compare) the same value.
_INT_EXACT = 1e14


def attr_number(value: float | int) -> float | int:
    """The number as both stores keep it (14 significant digits, integral -> int)."""
    num = float(f"{float(value):.14g}") + 0.0  # + 0.0: -0 is 0
    if num.is_integer() and abs(num) < _INT_EXACT:
        return int(num)
    return num


def attr_value(value: Any) -> Any:
    """A valid attribute value in its stored form, or ValueError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("attribute numbers must be finite")
        return attr_number(value)
    if isinstance(value, str):
        if len(value) > MAX_NAME_CHARS * 4:  # cheap bound before normalising
            raise ValueError(f"attribute strings have at most {MAX_NAME_CHARS} characters")
        # The rules of names: NFC, something visible, nothing that hides text.
        return check_name(value)
    raise ValueError("attribute values are strings, numbers or booleans")


def attr_key(key: str) -> str:
    if not _ATTR_KEY.fullmatch(key):
        raise ValueError(f"attribute key {key[:40]!r} must match [a-z][a-z0-9_]{{0,31}}")
    return key


def _attributes(limit: int, deletes: bool) -> Any:
    def check(attrs: dict[str, Any]) -> dict[str, Any]:
        if len(attrs) > limit:
            raise ValueError(f"at most {limit} attributes")
        return {attr_key(k): None if v is None and deletes else attr_value(v)
                for k, v in attrs.items()}
    return AfterValidator(check)


# Set at create: values only. In an update, null deletes the key.
SessionAttributes = Annotated[dict[str, Any], _attributes(MAX_SESSION_ATTRIBUTES, False)]
SessionAttributeUpdate = Annotated[dict[str, Any], _attributes(MAX_SESSION_ATTRIBUTES, True)]
PlayerAttributeUpdate = Annotated[dict[str, Any], _attributes(MAX_PLAYER_ATTRIBUTES, True)]
Visibility = Literal["public", "unlisted"]
FILTER_OPS: tuple[str, ...] = ("eq", "ne", "lt", "le", "gt", "ge", "in")
SORTS: tuple[str, ...] = ("newest", "oldest", "most_players", "fewest_players")
# Join codes: no look-alikes (0/O, 1/I/L are missing), 32 symbols, 6 of them.
JOIN_CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
JOIN_CODE_LENGTH = 6


# Candidates offered to the store at create, which takes the first one no live
# session holds: with 32**6 codes, all of them taken at once is as good as impossible.
JOIN_CODE_CANDIDATES = 3


def new_join_codes() -> list[str]:
    return ["".join(secrets.choice(JOIN_CODE_ALPHABET) for _ in range(JOIN_CODE_LENGTH))
            for _ in range(JOIN_CODE_CANDIDATES)]


def normalise_join_code(raw: str) -> str | None:
    """The code a player typed, as stored (upper case, no spaces or dashes), or
    None when it cannot be a code at all."""
    code = re.sub(r"[\s-]", "", raw).upper()
    if len(code) != JOIN_CODE_LENGTH or any(c not in JOIN_CODE_ALPHABET for c in code):
        return None
    return code


def _condition(key: str, cond: Any) -> tuple[str, str, Any]:
    if not isinstance(cond, dict):
        return key, "eq", attr_value(cond)
    if len(cond) != 1:
        raise ValueError(f"filter.{key}: one operator per key, e.g. {{\"ge\": 3}}")
    ((op, value),) = cond.items()
    if op not in FILTER_OPS:
        raise ValueError(f"filter.{key}: unknown operator {str(op)[:20]!r}")
    if op in ("lt", "le", "gt", "ge"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"filter.{key}: {op} compares with a number")
        return key, op, attr_value(value)
    if op == "in":
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_IN_VALUES:
            raise ValueError(f"filter.{key}: in takes a list of 1-{MAX_IN_VALUES} values")
        return key, op, [attr_value(v) for v in value]
    return key, op, attr_value(value)


def _filter(raw: dict[str, Any]) -> tuple[tuple[str, str, Any], ...]:
    if len(raw) > MAX_SESSION_ATTRIBUTES:
        raise ValueError(f"filter: at most {MAX_SESSION_ATTRIBUTES} keys")
    return tuple(_condition(attr_key(k), v) for k, v in raw.items())


# A filter as (key, op, value) conditions, all of which must hold.
Filter = Annotated[dict[str, Any], AfterValidator(_filter)]


def check_chat(value: str) -> str:
    """A chat line: the name rules (check_name), but up to MAX_CHAT_CHARS and
    spanning lines (newline is the one control character allowed)."""
    value = unicodedata.normalize("NFC", value)
    if len(value) > MAX_CHAT_CHARS:
        raise ValueError(f"must have at most {MAX_CHAT_CHARS} characters")
    visible = False
    for ch in value:
        category = unicodedata.category(ch)
        if category in _FORBIDDEN_CATEGORIES and ch != "\n":
            raise ValueError(
                f"must not contain U+{ord(ch):04X} (a control, format or separator character)")
        if not (ch.isspace() or category[0] == "M" or ch in _BLANK_LOOKING):
            visible = True
    if not visible:
        raise ValueError("must have a visible character")
    return value


ChatText = Annotated[
    str, Field(min_length=1, max_length=MAX_CHAT_CHARS * 4), AfterValidator(check_chat)]


class _Request(BaseModel):
    # strict: "8" is not a number and 1 is not a string; extra fields are ignored
    # so that newer clients can talk to older servers.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    id: RequestId = None


class Hello(_Request):
    type: Literal["hello"]
    name: Name | None = None
    token: Annotated[str, Field(max_length=MAX_JWT_CHARS)] | None = None
    resume_token: Annotated[str, Field(max_length=MAX_TOKEN_CHARS)] | None = None


class CreateSession(_Request):
    type: Literal["create_session"]
    name: Name | None = None
    max_players: Int | None = Field(default=None, ge=2, le=1_000)
    password: Annotated[str, Field(min_length=1, max_length=MAX_PASSWORD_CHARS)] | None = None
    attributes: SessionAttributes | None = None
    visibility: Visibility | None = None
    start_rule: Literal["host", "all_ready"] | None = None
    min_players: Int | None = Field(default=None, ge=1, le=1_000)


class ListSessions(_Request):
    type: Literal["list_sessions"]
    limit: Int | None = Field(default=None, ge=1, le=100)
    cursor: Annotated[str, Field(max_length=MAX_CURSOR_CHARS)] | None = None
    filter: Filter | None = None
    min_free_seats: Int | None = Field(default=None, ge=1, le=1_000)
    has_password: bool | None = None
    sort: Literal["newest", "oldest", "most_players", "fewest_players"] | None = None


class JoinSession(_Request):
    type: Literal["join_session"]
    # One of the two: the session's id, or the join code a member shared.
    session_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)] | None = None
    join_code: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)] | None = None
    password: Annotated[str, Field(max_length=MAX_PASSWORD_CHARS)] | None = None


class LeaveSession(_Request):
    type: Literal["leave_session"]


class StartSession(_Request):
    type: Literal["start_session"]


class KickPlayer(_Request):
    type: Literal["kick_player"]
    player_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
    ban: bool | None = None


class UpdateSession(_Request):
    type: Literal["update_session"]
    name: Name | None = None
    max_players: Int | None = Field(default=None, ge=2, le=1_000)
    # "" removes the password.
    password: Annotated[str, Field(max_length=MAX_PASSWORD_CHARS)] | None = None
    attributes: SessionAttributeUpdate | None = None
    visibility: Visibility | None = None
    locked: bool | None = None
    start_rule: Literal["host", "all_ready"] | None = None
    min_players: Int | None = Field(default=None, ge=1, le=1_000)


class UpdatePlayer(_Request):
    type: Literal["update_player"]
    attributes: PlayerAttributeUpdate


class PromotePlayer(_Request):
    type: Literal["promote_player"]
    player_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]


class Ping(_Request):
    type: Literal["ping"]


class JoinTicket(_Request):
    type: Literal["join_ticket"]


class SetReady(_Request):
    type: Literal["set_ready"]
    ready: bool


class SendChat(_Request):
    type: Literal["send_chat"]
    text: ChatText


class ChatHistory(_Request):
    type: Literal["chat_history"]
    after_seq: int | None = Field(default=None, ge=0)


Request = Annotated[
    Hello | CreateSession | ListSessions | JoinSession | LeaveSession | StartSession
    | KickPlayer | Ping | JoinTicket | UpdateSession | UpdatePlayer | PromotePlayer
    | SetReady | SendChat | ChatHistory,
    Field(discriminator="type"),
]
_request_adapter: TypeAdapter[Request] = TypeAdapter(Request)

REQUEST_TYPES: tuple[str, ...] = (
    "hello", "create_session", "list_sessions", "join_session", "leave_session",
    "start_session", "kick_player", "ping", "join_ticket",
    "update_session", "update_player", "promote_player",
    "set_ready", "send_chat", "chat_history",
)
EVENT_TYPES: tuple[str, ...] = (
    "player_joined", "player_left", "host_changed", "session_started",
    "session_start_failed", "session_closed", "kicked", "session_in_progress",
    "session_updated", "player_updated",
    "player_ready", "chat_message", "player_disconnected", "player_reconnected",
)
# "lost": it ended while the member's node was cut off from the store (reconcile).
# "closed_by_admin": an operator closed it (POST /admin/sessions/{id}/close).
CLOSE_REASONS: tuple[str, ...] = ("completed", "idle", "server_timeout", "expired", "lost",
                                   "closed_by_admin")
LEAVE_REASONS: tuple[str, ...] = ("left", "kicked", "timeout")


class _Envelope(BaseModel):
    """Just enough of a frame to address an error reply to it."""

    model_config = ConfigDict(extra="ignore")
    type: Any = None
    id: Any = None


class BadFrame(Exception):
    """A frame that is not a valid request; carries the reply to send."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        super().__init__(reply["error"]["message"])


def parse_request(raw: str | bytes) -> Request:
    """Validate one text frame into a request model, or raise BadFrame.

    The fast path parses once (pydantic's JSON parser straight into the model);
    only a frame that fails is parsed again, leniently, to find its type and id.
    """
    try:
        return _request_adapter.validate_json(raw)
    except ValidationError as exc:
        failure = exc
    try:
        env = _Envelope.model_validate_json(raw)
    except ValidationError:
        raise BadFrame(
            error_reply("error", None, ErrorCode.BAD_REQUEST, "frame is not a JSON object")
        ) from None
    rtype = env.type if isinstance(env.type, str) and len(env.type) <= MAX_ID_CHARS else "error"
    rid = env.id if _is_valid_id(env.id) else None
    if rtype not in REQUEST_TYPES:
        what = f"unknown request type {env.type!r}" if env.type is not None else "missing 'type'"
        raise BadFrame(error_reply(rtype, rid, ErrorCode.BAD_REQUEST, what))
    raise BadFrame(error_reply(rtype, rid, ErrorCode.BAD_REQUEST, _describe(failure)))


def envelope_of(raw: str | bytes) -> tuple[str, Any]:
    """The (type, id) to address a reply to a frame that is not parsed as a request."""
    try:
        env = _Envelope.model_validate_json(raw)
    except ValidationError:
        return "error", None
    rtype = env.type if isinstance(env.type, str) and env.type in REQUEST_TYPES else "error"
    return rtype, env.id if _is_valid_id(env.id) else None


def _is_valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and len(value) <= MAX_ID_CHARS)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        # loc starts with the union tag ("join_session"); the field is what helps.
        loc = [str(p) for p in err["loc"][1:]] or [str(p) for p in err["loc"]]
        msg = err["msg"]
        if err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc)}: {msg}")
    return "; ".join(parts) or "invalid request"


def ok_reply(rtype: str, rid: Any, result: dict[str, Any] | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"type": rtype, "id": rid, "ok": True}
    if result:
        reply.update(result)
    return reply


def error_reply(rtype: str, rid: Any, code: ErrorCode | str, message: str) -> dict[str, Any]:
    return {
        "type": rtype, "id": rid, "ok": False,
        "error": {"code": str(code), "message": message},
    }


def reply_for_error(rtype: str, rid: Any, err: LobbyError) -> dict[str, Any]:
    return error_reply(rtype, rid, err.code, err.message)


class EncodedList(list[str]):
    """JSON texts (each one value, from encode()) that encode() writes into a
    message as one array as they are: a page of sessions whose views a node
    has encoded before."""


def encode(message: dict[str, Any]) -> str:
    # Compact separators: frames are tiny and sent to many sockets.
    spliced = [k for k, v in message.items() if type(v) is EncodedList]
    if not spliced:
        return fastjson.dumps(message)
    text = fastjson.dumps({k: v for k, v in message.items() if type(v) is not EncodedList})
    arrays = ",".join(json.dumps(k, ensure_ascii=False) + ":[" + ",".join(message[k]) + "]"
                      for k in spliced)
    return text[:-1] + ("," if text != "{}" else "") + arrays + "}"
