"""What a game server relies on: join tickets and finding its session by server id.

`lobby.tickets` on its own, then `join_ticket` and `GET /v1/servers/{id}/session`
against real nodes in both modes. Every check of a ticket is made twice: with
`lobby.tickets.verify_ticket`, and with an HMAC computed here from the format in
protocol.md, so that the module and the documented contract cannot drift apart together.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from lobby.allocators.base import Allocation
from lobby.allocators.static import StaticAllocator
from lobby.cli import build_parser, settings_from_args
from lobby.tickets import InvalidTicket, TicketClaims, make_ticket, verify_ticket
from tests.conftest import http_request

KEY = "test-server-key"
TTL = 120
ENDPOINT = "127.0.0.1:7001"
DOC = (Path(__file__).resolve().parent.parent / "protocol.md").read_text("utf-8")


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def independent_sig(key: str, session_id: str, player_id: str, expires_at: int) -> str:
    """The signature as protocol.md defines it, without lobby.tickets."""
    message = f"v1.{session_id}.{player_id}.{expires_at}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def refusal(key: str, ticket: str, now: float) -> str:
    with pytest.raises(InvalidTicket) as info:
        verify_ticket(key, ticket, now)
    return info.value.reason


# lobby.tickets -----------------------------------------------------------------


def test_make_and_verify() -> None:
    ticket = make_ticket(KEY, "dPp0WY-LH5o", "p_P7JwZUMd0z4", 1_795_515_332)
    sig = independent_sig(KEY, "dPp0WY-LH5o", "p_P7JwZUMd0z4", 1_795_515_332)
    assert ticket == f"v1.dPp0WY-LH5o.p_P7JwZUMd0z4.1795515332.{sig}"
    assert verify_ticket(KEY, ticket, 1_795_515_331.9) == TicketClaims(
        "dPp0WY-LH5o", "p_P7JwZUMd0z4", 1_795_515_332)
    # A bytes key is the same key.
    assert make_ticket(KEY.encode(), "dPp0WY-LH5o", "p_P7JwZUMd0z4", 1_795_515_332) == ticket
    # The key is UTF-8: a non-ASCII key signs as its UTF-8 bytes.
    assert make_ticket("clé", "s", "p", 5).endswith(independent_sig("clé", "s", "p", 5))


def test_expiry_is_exclusive() -> None:
    ticket = make_ticket(KEY, "s1", "p_1", 1_000)
    assert verify_ticket(KEY, ticket, 999.999).expires_at == 1_000
    assert refusal(KEY, ticket, 1_000) == "expired"
    assert refusal(KEY, ticket, 5_000) == "expired"


def _swap(ticket: str, index: int, value: str) -> str:
    parts = ticket.split(".")
    parts[index] = value
    return ".".join(parts)


@pytest.mark.parametrize(("tamper", "reason"), [
    (lambda t: _swap(t, 1, "s2"), "bad_signature"),  # another session
    (lambda t: _swap(t, 2, "p_2"), "bad_signature"),  # another player
    (lambda t: _swap(t, 3, "9999999999"), "bad_signature"),  # a later expiry
    (lambda t: _swap(t, 4, "0" * 64), "bad_signature"),
    (lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"), "bad_signature"),
    (lambda t: _swap(t, 4, t.split(".")[4].upper()), "bad_signature"),
    (lambda t: _swap(t, 4, "é" * 64), "bad_signature"),
    (lambda t: _swap(t, 0, "v2"), "malformed"),
    (lambda t: t + ".x", "malformed"),
    (lambda t: t.rsplit(".", 1)[0], "malformed"),
    (lambda t: _swap(t, 1, ""), "malformed"),
    (lambda t: _swap(t, 2, ""), "malformed"),
    (lambda t: _swap(t, 3, "-5"), "malformed"),
    (lambda t: _swap(t, 3, "\uff11\uff12"), "malformed"),  # digits, not ASCII ones
    (lambda t: _swap(t, 4, "abc"), "malformed"),
    (lambda t: "", "malformed"),
])
def test_tampered_tickets_are_refused(tamper: Any, reason: str) -> None:
    ticket = make_ticket(KEY, "s1", "p_1", 2_000_000_000)
    assert refusal(KEY, tamper(ticket), 1_000) == reason


def test_another_key_is_a_bad_signature() -> None:
    ticket = make_ticket("other-key", "s1", "p_1", 2_000_000_000)
    assert refusal(KEY, ticket, 1_000) == "bad_signature"


@pytest.mark.parametrize(("session_id", "player_id", "expires_at"), [
    ("s.1", "p_1", 5), ("s1", "p.1", 5), ("", "p_1", 5), ("s1", "", 5),
    ("s1", "p_1", -1), ("s1", "p_1", 5.0), ("s1", "p_1", True),
])
def test_make_ticket_refuses_what_could_not_be_read_back(
    session_id: str, player_id: str, expires_at: Any
) -> None:
    with pytest.raises(ValueError):
        make_ticket(KEY, session_id, player_id, expires_at)


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError):
        make_ticket("", "s1", "p_1", 5)
    with pytest.raises(ValueError):
        verify_ticket(b"", make_ticket(KEY, "s1", "p_1", 5), 1)


def test_protocol_doc_snippet_agrees_with_the_module() -> None:
    """The verification snippet game-server authors copy from protocol.md works."""
    section = DOC.split("#### The ticket, and how a game server checks it", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)
    check = namespace["check_ticket"]
    now = int(time.time())
    good = make_ticket(KEY, "s1", "p_1", now + 60)
    assert check(KEY, good, "s1", {"p_1", "p_2"}) == "p_1"
    cases = {
        "malformed": (good.rsplit(".", 1)[0], "s1"),
        "bad_signature": (_swap(good, 2, "p_2"), "s1"),
        "expired": (make_ticket(KEY, "s1", "p_1", now - 1), "s1"),
        "wrong_session": (good, "s2"),
        "not_a_member": (make_ticket(KEY, "s1", "p_3", now + 60), "s1"),
    }
    for reason, (ticket, session_id) in cases.items():
        with pytest.raises(ValueError, match=f"^{reason}$"):
            check(KEY, ticket, session_id, {"p_1", "p_2"})
    # The documented example is a genuine ticket for the key the doc names.
    example = re.search(r'"ticket":"(v1\.[^"]+)"', DOC)
    assert example is not None
    claims = verify_ticket("devkey", example.group(1), 0)
    assert f'"expires_at":{claims.expires_at}}}' in DOC


def test_ticket_ttl_from_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def ttl(*argv: str) -> int:
        return settings_from_args(build_parser().parse_args(["serve", *argv])).ticket_ttl_seconds

    monkeypatch.delenv("LOBBY_TICKET_TTL_SECONDS", raising=False)
    assert ttl() == 300
    monkeypatch.setenv("LOBBY_TICKET_TTL_SECONDS", "42")
    assert ttl() == 42
    assert ttl("--ticket-ttl-seconds", "7") == 7
    with pytest.raises(SystemExit):
        ttl("--ticket-ttl-seconds", "0")


# join_ticket on real nodes -------------------------------------------------------


async def ticket_of(player: Any, session_id: str) -> dict[str, Any]:
    """A join_ticket reply, checked every way this suite knows."""
    before = time.time()
    reply = await player.ok("join_ticket")
    after = time.time()
    assert set(reply) == {"type", "id", "ok", "ticket", "server_endpoint", "expires_at"}
    expires_at = reply["expires_at"]
    assert isinstance(expires_at, int) and not isinstance(expires_at, bool)
    assert int(before) + TTL <= expires_at <= after + TTL
    assert abs(expires_at - (time.time() + TTL)) <= 1
    claims = verify_ticket(KEY, reply["ticket"], time.time())
    assert claims == TicketClaims(session_id, player.player_id, expires_at)
    sig = independent_sig(KEY, session_id, player.player_id, expires_at)
    assert reply["ticket"] == f"v1.{session_id}.{player.player_id}.{expires_at}.{sig}"
    # What a forger would try: the same ticket for someone else, or for longer.
    assert refusal(KEY, _swap(reply["ticket"], 2, "p_someoneelse"), time.time()) \
        == "bad_signature"
    assert refusal(KEY, _swap(reply["ticket"], 1, "another"), time.time()) == "bad_signature"
    assert refusal(KEY, _swap(reply["ticket"], 3, str(expires_at + 3600)), time.time()) \
        == "bad_signature"
    assert refusal(KEY, reply["ticket"], expires_at) == "expired"
    return reply


async def test_members_of_a_started_session_get_tickets(make_mode_node, connect_player
                                                        ) -> None:
    node = await make_mode_node(server_key=KEY, ticket_ttl_seconds=TTL,
                                allocator=StaticAllocator(ENDPOINT, server_id="gs-1"))
    host = await connect_player(node, "host")
    guest = await connect_player(node, "guest")
    leaver = await connect_player(node, "leaver")
    stranger = await connect_player(node, "stranger")
    await stranger.error("join_ticket", "NOT_IN_SESSION")

    sid = (await host.ok("create_session"))["session"]["session_id"]
    await host.error("join_ticket", "SESSION_NOT_STARTED")
    await guest.ok("join_session", session_id=sid)
    await leaver.ok("join_session", session_id=sid)
    await guest.error("join_ticket", "SESSION_NOT_STARTED")

    await host.ok("start_session")
    for p in (host, guest, leaver):
        assert (await ticket_of(p, sid))["server_endpoint"] == ENDPOINT
    await stranger.error("join_ticket", "NOT_IN_SESSION")
    # A member who left gets none: membership is the session's, not the socket's memory.
    await leaver.ok("leave_session")
    await leaver.error("join_ticket", "NOT_IN_SESSION")

    status, _ = await http_request(node.port, "POST", f"/v1/sessions/{sid}/in-progress", auth())
    assert status == 200
    await guest.event("session_in_progress")
    for p in (host, guest):
        await ticket_of(p, sid)

    status, _ = await http_request(node.port, "POST", f"/v1/sessions/{sid}/complete", auth())
    assert status == 200
    for p in (host, guest):
        assert (await p.event("session_closed"))["reason"] == "completed"
        await p.error("join_ticket", "NOT_IN_SESSION")


async def test_a_resumed_member_gets_a_ticket(make_mode_node, connect_player) -> None:
    node = await make_mode_node(server_key=KEY, ticket_ttl_seconds=TTL,
                                allocator=StaticAllocator(ENDPOINT))
    host = await connect_player(node, "host")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    await host.ok("start_session")
    await host.close()
    back = await connect_player(node, None)
    reply = await back.hello(resume_token=host.resume_token)
    assert reply["resumed"] is True
    await ticket_of(back, sid)


class GatedAllocator:
    """Claims a server only when the test says so: the session stays CONNECTING
    without a server for as long as the test needs."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def allocate(self, session_id: str, player_ids: list[str]) -> Allocation:
        self.asked.set()
        await self.release.wait()
        return Allocation("gs-gated", ENDPOINT)

    async def close(self) -> None:
        return None


async def test_no_ticket_until_the_game_server_is_claimed(make_mode_node, connect_player
                                                          ) -> None:
    gate = GatedAllocator()
    node = await make_mode_node(server_key=KEY, ticket_ttl_seconds=TTL, allocator=gate)
    host = await connect_player(node, "host")
    guest = await connect_player(node, "guest")
    sid = (await host.ok("create_session"))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid)
    starting = asyncio.create_task(host.ok("start_session"))
    await asyncio.wait_for(gate.asked.wait(), 5)
    # CONNECTING, but no server_endpoint yet.
    await guest.error("join_ticket", "SESSION_NOT_STARTED")
    gate.release.set()
    assert (await starting)["session"]["server_endpoint"] == ENDPOINT
    await ticket_of(guest, sid)


async def test_tickets_disabled_without_a_server_key(make_mode_node, connect_player) -> None:
    node = await make_mode_node(ticket_ttl_seconds=TTL)
    host = await connect_player(node, "host")
    # Said before anything else: no state of the session would make it work.
    await host.error("join_ticket", "TICKETS_DISABLED")
    await host.ok("create_session")
    await host.ok("start_session")
    reply = await host.error("join_ticket", "TICKETS_DISABLED")
    assert "server key" in reply["error"]["message"]


# GET /v1/servers/{server_id}/session ---------------------------------------------


async def server_session(node: Any, server_id: str, headers: dict[str, str] | None = None,
                         method: str = "GET") -> tuple[int, dict[str, Any]]:
    status, body = await http_request(
        node.port, method, f"/v1/servers/{server_id}/session", headers)
    return status, json.loads(body)


async def test_a_game_server_finds_its_session(make_mode_node, connect_player) -> None:
    node = await make_mode_node(server_key=KEY,
                                allocator=StaticAllocator(ENDPOINT, server_id="gs-7"))
    host = await connect_player(node, "host")
    guest = await connect_player(node, "guest")
    status, body = await server_session(node, "gs-7", auth())
    assert (status, body["error"]["code"]) == (404, "SESSION_NOT_FOUND")

    sid = (await host.ok("create_session"))["session"]["session_id"]
    await guest.ok("join_session", session_id=sid)
    assert (await server_session(node, "gs-7", auth()))[0] == 404  # waiting: no server yet
    started = await host.ok("start_session")
    server_id = (await guest.event("session_started"))["server_id"]
    assert server_id == "gs-7"

    status, body = await server_session(node, server_id)
    assert status == 401 and body["error"]["code"] == "UNAUTHORIZED"
    assert (await server_session(node, server_id, auth("wrong")))[0] == 403
    assert (await server_session(node, server_id, {"Authorization": "Basic x"}))[0] == 401
    assert (await server_session(node, "gs-unknown", auth()))[0] == 404
    assert (await server_session(node, server_id, auth(), method="POST"))[0] == 405
    for path in ("/v1/servers/gs-7", "/v1/servers/gs-7/", "/v1/servers//session",
                 "/v1/servers/gs-7/session/x", "/v1/servers/gs-7/players"):
        status, body = await http_request(node.port, "GET", path, auth())
        assert (status, json.loads(body)["error"]["code"]) == (404, "NOT_FOUND"), path

    status, body = await server_session(node, server_id, auth())
    assert status == 200 and body == {"ok": True, "session": started["session"]}
    assert [p["player_id"] for p in body["session"]["players"]] == [
        host.player_id, guest.player_id]
    # The session as it is now, not as it was claimed.
    await http_request(node.port, "POST", f"/v1/sessions/{sid}/in-progress", auth())
    status, body = await server_session(node, server_id, auth())
    assert status == 200 and body["session"]["session_state"] == "IN_PROGRESS"

    status, _ = await http_request(node.port, "POST", f"/v1/sessions/{sid}/complete", auth())
    assert status == 200
    status, body = await server_session(node, server_id, auth())
    assert (status, body["error"]["code"]) == (404, "SESSION_NOT_FOUND")


async def test_a_reused_server_answers_its_latest_session(make_mode_node, connect_player
                                                          ) -> None:
    node = await make_mode_node(server_key=KEY,
                                allocator=StaticAllocator(ENDPOINT, server_id="gs-7"))
    first = await connect_player(node, "first")
    second = await connect_player(node, "second")
    sid1 = (await first.ok("create_session"))["session"]["session_id"]
    await first.ok("start_session")
    sid2 = (await second.ok("create_session"))["session"]["session_id"]
    await second.ok("start_session")
    assert (await server_session(node, "gs-7", auth()))[1]["session"]["session_id"] == sid2
    # The end of the earlier session leaves the server to the later one.
    await http_request(node.port, "POST", f"/v1/sessions/{sid1}/complete", auth())
    assert (await server_session(node, "gs-7", auth()))[1]["session"]["session_id"] == sid2
    await second.ok("leave_session")  # the last member: the session is deleted
    assert (await server_session(node, "gs-7", auth()))[0] == 404


async def test_server_lookup_refused_without_configured_key(make_mode_node, connect_player
                                                             ) -> None:
    node = await make_mode_node(allocator=StaticAllocator(ENDPOINT, server_id="gs-7"))
    host = await connect_player(node, "host")
    await host.ok("create_session")
    await host.ok("start_session")
    for headers in (None, auth()):
        status, body = await server_session(node, "gs-7", headers)
        assert status == 403 and "--server-key" in body["error"]["message"]
