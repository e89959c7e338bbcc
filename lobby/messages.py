"""Every frame the server sends, as pydantic models: the replies and the events.

The requests are in `lobby/protocol.py` (the server validates them there, on its
fast path). These models are the other half of the contract: the server builds its
frames as plain dicts for speed, and these describe them. `lobby schema` turns both
halves into `schema/lobby.schema.json` and `schema/asyncapi.yaml`, and the test
suite checks every frame the server sends against that schema.

Adding a message: add its request model to `protocol.Request` and its reply model
to `REPLY_MODELS` below, or its event model to `EVENT_MODELS`; then run
`lobby schema` and commit the files it writes. A frame of a type with no model
fails the suite, saying so.

Server frames always carry every field a model lists (`None` as `null`), so no
field here has a default: a required field is one the client can rely on.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lobby.errors import ErrorCode
from lobby.protocol import CLOSE_REASONS, LEAVE_REASONS, RequestId


class _Frame(BaseModel):
    # Clients must ignore fields they do not know (protocol.md): the published
    # schema allows extra fields; the suite's check of sent frames does not.
    model_config = ConfigDict(extra="allow")


# An attribute value: a string, a finite number or a boolean (protocol.md, Attributes).
AttributeValue = str | int | float | bool


class Player(_Frame):
    player_id: str
    name: str
    attributes: dict[str, AttributeValue] = Field(
        description="the player's own attributes (update_player), at most 8")
    ready: bool = Field(description="the player's ready flag (set_ready); false on join")
    connected: bool = Field(
        description="false while the player's socket is down and their seat held")


class ChatMessage(_Frame):
    """A kept chat message (the chat of replies, chat_history's messages)."""

    seq: int = Field(ge=1, description="grows by 1 with each message of the session")
    player_id: str
    name: str = Field(description="the sender's name when sent")
    text: str = Field(description="1-500 characters, may span lines")
    sent_at: float = Field(description="Unix time in seconds, with milliseconds")


class Session(_Frame):
    """The session object: every event that changes a session carries it whole."""

    session_id: str = Field(description="opaque, up to 64 characters")
    name: str = Field(description="shown in the browser")
    host_id: str | None = Field(
        description="player id of the host; null in list_sessions for a password room "
                    "you are not in")
    session_state: Literal["WAITING", "CONNECTING", "IN_PROGRESS"]
    player_count: int = Field(ge=0, description="seats taken")
    max_players: int = Field(ge=1, description="seats in all")
    connected_players: list[str] = Field(description="the members' player ids, in join order")
    players: list[Player] = Field(description="the members, in join order")
    has_password: bool = Field(description="whether joining needs a password")
    server_id: str | None = Field(description="the game server once allocated")
    server_endpoint: str | None = Field(
        description='"host:port" of the game server once allocated ("[::1]:6060" for IPv6)')
    created_at: float = Field(description="Unix time in seconds, with milliseconds")
    version: int = Field(description="grows with each change; a lower one is stale")
    attributes: dict[str, AttributeValue] = Field(
        description="the game's description of the room, at most 16 keys")
    visibility: Literal["public", "unlisted"] = Field(
        description="unlisted: never in list_sessions")
    locked: bool = Field(description="true: nobody can join, and the room is not listed")
    join_code: str | None = Field(
        description="6 characters to share; shown only to members (null for anyone else)")
    start_rule: Literal["host", "all_ready"] = Field(
        description="host: the host starts when they like; all_ready: once every member is ready")
    min_players: int = Field(ge=1, description="members needed to start")


class ErrorBody(_Frame):
    code: ErrorCode
    message: str


# --- replies ---------------------------------------------------------------------


class _Reply(_Frame):
    id: RequestId = Field(description="the request's id, echoed; null when it had none")
    ok: Literal[True]


class ErrorReply(_Frame):
    """Any request refused, and frames that are not requests at all (type "error")."""

    type: str = Field(description='the request\'s type, or "error" when the frame had none')
    id: RequestId = Field(description="the request's id when it had a valid one, else null")
    ok: Literal[False]
    error: ErrorBody


class HelloReply(_Reply):
    type: Literal["hello"]
    player_id: str
    name: str
    resume_token: str = Field(description="a secret: keep it to resume, never show it")
    resumed: bool
    session: Session | None = Field(description="the player's session when resumed into one")
    chat: list[ChatMessage] = Field(description="the session's kept chat when resumed into one")


class CreateSessionReply(_Reply):
    type: Literal["create_session"]
    session: Session
    chat: list[ChatMessage] = Field(description="always empty: a new session")


class ListSessionsReply(_Reply):
    type: Literal["list_sessions"]
    sessions: list[Session]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null: last")


class JoinSessionReply(_Reply):
    type: Literal["join_session"]
    session: Session
    chat: list[ChatMessage] = Field(description="the session's kept chat, oldest first")


class LeaveSessionReply(_Reply):
    type: Literal["leave_session"]


class KickPlayerReply(_Reply):
    type: Literal["kick_player"]


class StartSessionReply(_Reply):
    type: Literal["start_session"]
    session: Session


class JoinTicketReply(_Reply):
    type: Literal["join_ticket"]
    ticket: str = Field(description="opaque to the client: present it to the game server")
    server_endpoint: str
    expires_at: int = Field(description="Unix seconds; the game server refuses it from then")


class PingReply(_Reply):
    type: Literal["ping"]


class UpdateSessionReply(_Reply):
    type: Literal["update_session"]
    session: Session


class UpdatePlayerReply(_Reply):
    type: Literal["update_player"]


class PromotePlayerReply(_Reply):
    type: Literal["promote_player"]
class SetReadyReply(_Reply):
    type: Literal["set_ready"]


class SendChatReply(_Reply):
    type: Literal["send_chat"]


class ChatHistoryReply(_Reply):
    type: Literal["chat_history"]
    messages: list[ChatMessage] = Field(description="kept messages after after_seq, oldest first")


REPLY_MODELS: tuple[type[_Reply], ...] = (
    HelloReply, CreateSessionReply, ListSessionsReply, JoinSessionReply, LeaveSessionReply,
    KickPlayerReply, StartSessionReply, JoinTicketReply, PingReply,
    UpdateSessionReply, UpdatePlayerReply, PromotePlayerReply,
    SetReadyReply, SendChatReply, ChatHistoryReply,
)


# --- events ----------------------------------------------------------------------


class _Event(_Frame):
    session_id: str


class PlayerJoinedEvent(_Event):
    type: Literal["player_joined"]
    player_id: str
    name: str
    session: Session


class PlayerLeftEvent(_Event):
    type: Literal["player_left"]
    player_id: str
    reason: Literal[LEAVE_REASONS]  # type: ignore[valid-type]
    session: Session


class HostChangedEvent(_Event):
    type: Literal["host_changed"]
    host_id: str
    session: Session


class SessionStartedEvent(_Event):
    type: Literal["session_started"]
    server_id: str
    server_endpoint: str
    session: Session


class SessionStartFailedEvent(_Event):
    type: Literal["session_start_failed"]
    error: ErrorBody
    session: Session


class SessionInProgressEvent(_Event):
    type: Literal["session_in_progress"]
    session: Session


class SessionClosedEvent(_Event):
    """The session ended; it carries no session object."""

    type: Literal["session_closed"]
    reason: Literal[CLOSE_REASONS]  # type: ignore[valid-type]


class KickedEvent(_Event):
    type: Literal["kicked"]
    session: Session | None = None  # the room as it is without them


class SessionUpdatedEvent(_Event):
    type: Literal["session_updated"]
    session: Session


class PlayerUpdatedEvent(_Event):
    type: Literal["player_updated"]
    player_id: str
    session: Session


class PlayerReadyEvent(_Event):
    type: Literal["player_ready"]
    player_id: str
    ready: bool
    session: Session


class ChatMessageEvent(_Event):
    """A member said something; the session did not change, so no session object."""

    type: Literal["chat_message"]
    seq: int = Field(ge=1)
    player_id: str
    name: str
    text: str
    sent_at: float


class PlayerDisconnectedEvent(_Event):
    type: Literal["player_disconnected"]
    player_id: str
    hold_until: float | None = Field(
        description="Unix seconds when the held seat is given up; null: held for the "
                    "session's life (a started session)")
    session: Session


class PlayerReconnectedEvent(_Event):
    type: Literal["player_reconnected"]
    player_id: str
    session: Session


EVENT_MODELS: tuple[type[_Event], ...] = (
    PlayerJoinedEvent, PlayerLeftEvent, HostChangedEvent, SessionStartedEvent,
    SessionStartFailedEvent, SessionInProgressEvent, SessionClosedEvent, KickedEvent,
    SessionUpdatedEvent, PlayerUpdatedEvent,
    PlayerReadyEvent, ChatMessageEvent, PlayerDisconnectedEvent, PlayerReconnectedEvent,
)


def message_type(model: type[BaseModel]) -> str:
    """The `type` value of a request, reply or event model."""
    annotation: Any = model.model_fields["type"].annotation
    (value,) = annotation.__args__
    return str(value)


REPLIES: dict[str, type[_Reply]] = {message_type(m): m for m in REPLY_MODELS}
EVENTS: dict[str, type[_Event]] = {message_type(m): m for m in EVENT_MODELS}
