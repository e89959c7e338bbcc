"""lobby.client against real nodes (embedded and Redis): a whole lifecycle, resume
after a socket cut by a real TCP proxy, timeouts, and giving up. Every frame the
client receives is checked against the schema, as with the suite's own clients."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lobby import messages as m
from lobby.client import LobbyClient, NotConnected, RequestError, RequestTimeout, connect
from tests.conftest import ws_url
from tests.faults import tcp_proxy  # noqa: F401
from tests.fleetiq_fixtures import fleetiq_with_servers
from tests.frames import SENT_FRAMES


def client(url: str, name: str, **kw: Any) -> Any:
    return connect(url, name=name, on_frame=SENT_FRAMES.check, **kw)


def waiter(lobby: LobbyClient, name: str) -> asyncio.Future[Any]:
    """A future set by the first `name` callback (client events or protocol events)."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def done(value: Any) -> None:
        if not fut.done():
            fut.set_result(value)

    lobby.on(name, done)
    return fut


async def test_a_bot_in_ten_lines(node) -> None:
    """The README's bot: host, wait for a second player, start."""
    url = ws_url(node)
    async with client(url, "bot") as bot, client(url, "guest") as guest:
        room = await bot.create_session("Bots only", 2)
        await guest.join_session(room.session_id)
        async for event in bot:
            if event.type == "player_joined" and bot.session.player_count == 2:
                started = await bot.start_session()
                break
        assert started.session_state == "CONNECTING"
        assert started.server_endpoint == "127.0.0.1:6060"


async def test_full_lifecycle_with_typed_results_events_and_mirror(node) -> None:
    url = ws_url(node)
    async with client(url, "alice") as host, client(url, "bob") as guest:
        assert host.player_id and host.player_id.startswith("p_") and host.name == "alice"
        assert host.resume_token and host.session is None
        seen: list[str] = []
        host.on("*", lambda ev: seen.append(ev.type))

        session = await host.create_session("Friday", 4)
        assert isinstance(session, m.Session)
        assert (session.name, session.max_players, session.host_id) == (
            "Friday", 4, host.player_id)
        assert host.session == session

        page = await guest.list_sessions(limit=10)
        assert isinstance(page, m.ListSessionsReply)
        assert [s.session_id for s in page.sessions] == [session.session_id]
        assert page.next_cursor is None

        joined_cb = waiter(host, "player_joined")
        joined = await guest.join_session(session.session_id)
        assert joined.player_count == 2 and guest.session == joined
        event = await host.next_event("player_joined")
        assert isinstance(event, m.PlayerJoinedEvent)
        assert (event.player_id, event.name) == (guest.player_id, "bob")
        assert (await asyncio.wait_for(joined_cb, 5)) is event
        # The mirror was updated before the event was handed out.
        assert host.session is not None and host.session.player_count == 2

        with pytest.raises(RequestError) as refused:
            await guest.start_session()
        assert refused.value.code == "NOT_HOST"
        with pytest.raises(RequestError) as no_tickets:
            await host.join_ticket()
        assert no_tickets.value.code == "TICKETS_DISABLED"

        started = await host.start_session()
        assert started.session_state == "CONNECTING"
        ev = await guest.next_event("session_started")
        assert isinstance(ev, m.SessionStartedEvent)
        assert ev.server_endpoint == "127.0.0.1:6060"
        assert guest.session is not None and guest.session.server_endpoint == "127.0.0.1:6060"

        await guest.leave_session()
        assert guest.session is None
        left = await host.next_event("player_left")
        assert isinstance(left, m.PlayerLeftEvent)
        assert (left.player_id, left.reason) == (guest.player_id, "left")
        assert host.session is not None and host.session.player_count == 1
        await host.ping()
        assert seen[:2] == ["player_joined", "session_started"]
        assert "player_left" in seen


async def test_kick_and_unknown_session(node) -> None:
    url = ws_url(node)
    async with client(url, "host") as host, client(url, "guest") as guest:
        with pytest.raises(RequestError) as missing:
            await guest.join_session("no-such-session")
        assert missing.value.code == "SESSION_NOT_FOUND"
        assert missing.value.reply["ok"] is False
        room = await host.create_session()
        await guest.join_session(room.session_id)
        await host.kick_player(guest.player_id)
        kicked = await guest.next_event("kicked")
        assert isinstance(kicked, m.KickedEvent) and guest.session is None


async def test_resume_after_a_cut_socket(node, tcp_proxy) -> None:  # noqa: F811
    proxy = tcp_proxy(node.port)
    url = proxy.url("ws", "/ws")
    async with client(url, "alice", reconnect_base_delay=0.05) as alice, \
            client(ws_url(node), "bob") as bob:
        room = await alice.create_session("Cut", 4)
        player, token = alice.player_id, alice.resume_token
        reconnected = waiter(alice, "reconnected")
        assert proxy.cut() == 1
        # The seat is held: bob joins while alice is away, alice hears of it on resume.
        assert await asyncio.wait_for(reconnected, 10) is True
        assert alice.player_id == player and alice.resume_token == token
        assert alice.state == "online" and alice.reconnects == 1
        assert alice.session is not None and alice.session.session_id == room.session_id
        await bob.join_session(room.session_id)
        event = await alice.next_event("player_joined")
        assert event.player_id == bob.player_id
        assert alice.session.player_count == 2
        assert proxy.forwarded == 2  # one socket before the cut, one after


async def test_requests_wait_for_the_reconnect(node, tcp_proxy) -> None:  # noqa: F811
    proxy = tcp_proxy(node.port)
    async with client(proxy.url("ws", "/ws"), "carol", reconnect_base_delay=0.05) as carol:
        room = await carol.create_session()
        proxy.down()  # refused until restored: carol keeps retrying
        reconnecting = waiter(carol, "reconnecting")
        await asyncio.wait_for(reconnecting, 5)
        assert carol.state == "reconnecting"
        ping = asyncio.ensure_future(carol.ping())  # made while reconnecting
        proxy.restore()
        await asyncio.wait_for(ping, 10)
        assert carol.session is not None and carol.session.session_id == room.session_id


async def test_timeouts(node, tcp_proxy) -> None:  # noqa: F811
    proxy = tcp_proxy(node.port)
    async with client(proxy.url("ws", "/ws"), "dave", timeout=0.5) as dave:
        room = await dave.create_session()
        proxy.stall()
        with pytest.raises(RequestTimeout) as late:
            await dave.leave_session()
        assert late.value.code == "TIMEOUT"
        proxy.restore()
        # The late reply still reaches the mirror; the client stays usable.
        await dave.ping()
        assert dave.session is None
        page = await dave.list_sessions()
        assert room.session_id not in [s.session_id for s in page.sessions]


async def test_start_session_waits_for_its_claim(make_node) -> None:
    """start_session's reply comes after the claim, which GameLift may hold back (its
    claim limit): it gets start_timeout (40 s), not the 0.5 s every other request
    gets here. A claim slower than both times out as any request does."""
    with fleetiq_with_servers("slow-claims", 2) as fleetiq:
        node = await make_node(fleetiq_group="slow-claims", aws_endpoint_url=fleetiq.url)
        fleetiq.inject_faults({"ClaimGameServer": [{"delay": 1.0}, {"delay": 1.0}]})
        async with client(ws_url(node), "patient", timeout=0.5) as patient:
            await patient.create_session()
            started = await patient.start_session()
            assert started.server_endpoint == "10.0.0.0:6060"
        async with client(ws_url(node), "hasty", timeout=0.5, start_timeout=0.5) as hasty:
            await hasty.create_session()
            with pytest.raises(RequestTimeout) as late:
                await hasty.start_session()
            assert "start_session within 0.5 s" in str(late.value)


async def test_gives_up_after_its_attempts(node, tcp_proxy) -> None:  # noqa: F811
    proxy = tcp_proxy(node.port)
    lobby = await client(proxy.url("ws", "/ws"), "erin", max_reconnect_attempts=2,
                         reconnect_base_delay=0.02)
    try:
        gone = waiter(lobby, "disconnected")
        proxy.down()
        await asyncio.wait_for(gone, 10)
        assert lobby.state == "closed"
        with pytest.raises(NotConnected):
            await lobby.ping()
        assert [ev async for ev in lobby] == []  # the iterator ends
    finally:
        await lobby.close()


async def test_connect_fails_clearly_when_nobody_listens() -> None:
    from tests.conftest import free_port

    with pytest.raises(OSError):
        await connect(f"ws://127.0.0.1:{free_port()}/ws", name="x", timeout=2)


async def test_lobby_data_methods(node) -> None:
    url = ws_url(node)
    async with client(url, "host") as host, client(url, "guest") as guest:
        room = await host.create_session("Data", 4, attributes={"map": "aztec"})
        assert room.attributes == {"map": "aztec"} and room.join_code
        joined = await guest.join_session(join_code=room.join_code)
        assert joined.session_id == room.session_id
        updated = await host.update_session(attributes={"mode": "ctf"}, locked=True)
        assert updated.locked and updated.attributes == {"map": "aztec", "mode": "ctf"}
        assert host.session == updated
        ev = await guest.next_event("session_updated")
        assert isinstance(ev, m.SessionUpdatedEvent) and guest.session.locked
        await guest.update_player({"team": "red"})
        pe = await host.next_event("player_updated")
        assert isinstance(pe, m.PlayerUpdatedEvent) and pe.player_id == guest.player_id
        await host.promote_player(guest.player_id)
        hc = await guest.next_event("host_changed")
        assert hc.host_id == guest.player_id == guest.session.host_id
        await guest.update_session(locked=False)
        await guest.kick_player(host.player_id, ban=True)
        await host.next_event("kicked")
        with pytest.raises(RequestError) as banned:
            await host.join_session(room.session_id)
        assert banned.value.code == "BANNED"
        page = await host.list_sessions(filter={"map": "aztec"}, min_free_seats=1)
        assert [s.session_id for s in page.sessions] == [room.session_id]


def test_one_method_per_request_in_both_clients() -> None:
    """lobby.client and lobby.js have a method for every request type of protocol.py."""
    from pathlib import Path

    from lobby import protocol

    js = (Path(__file__).resolve().parent.parent / "clients/js/lobby.js").read_text("utf-8")
    missing_py = [t for t in protocol.REQUEST_TYPES
                  if t != "hello" and not callable(getattr(LobbyClient, t, None))]
    assert not missing_py, f"lobby/client.py has no method for {missing_py}: add one"
    camel = {t: t.split("_")[0] + "".join(p.capitalize() for p in t.split("_")[1:])
             for t in protocol.REQUEST_TYPES if t != "hello"}
    missing_js = [f"{c} ({t})" for t, c in camel.items() if f"async {c}(" not in js]
    assert not missing_js, f"clients/js/lobby.js has no method for {missing_js}: add one"


async def test_room_life_methods(node) -> None:
    url = ws_url(node)
    async with client(url, "host") as host, client(url, "guest") as guest:
        room = await host.create_session("Chatty", 4)
        await guest.join_session(room.session_id)
        await guest.set_ready(True)
        ready = await host.next_event("player_ready")
        assert ready.player_id == guest.player_id
        await host.send_chat("hello there")
        said = await guest.next_event("chat_message")
        assert said.text == "hello there"
        history = await guest.chat_history()
        assert [(c.name, c.text) for c in history] == [("host", "hello there")]
        assert await guest.chat_history(after_seq=history[-1].seq) == []
