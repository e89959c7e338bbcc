"""The admin API (auth and every call) with real WebSocket players, and its console
page in headless Chromium."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from lobby.app import LobbyNode
from tests.browser import browser, page  # noqa: F401  (fixtures)
from tests.conftest import http_request

KEY = "admin-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def admin(node: LobbyNode, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    hdrs = dict(AUTH if headers is None else headers)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    status, raw = await http_request(node.port, method, path, hdrs, data)
    return status, json.loads(raw)


async def test_admin_auth(make_node) -> None:
    off = await make_node()
    status, reply = await admin(off, "GET", "/admin/sessions")
    assert status == 403 and reply["error"]["code"] == "DISABLED"
    node = await make_node(admin_key=KEY)
    for path in ("/admin/sessions", "/admin/nodes", "/admin/sessions/x"):
        status, reply = await admin(node, "GET", path, headers={})
        assert status == 401 and reply["error"]["code"] == "UNAUTHORIZED"
        status, reply = await admin(node, "GET", path, headers={"Authorization": "Bearer no"})
        assert status == 403 and reply["error"]["code"] == "FORBIDDEN"
    for path in ("/admin/sessions/x/close", "/admin/sessions/x/kick/p"):
        assert (await admin(node, "POST", path, headers={}))[0] == 401
        assert (await admin(node, "POST", path, headers={"Authorization": "Bearer no"}))[0] == 403
    assert (await admin(node, "GET", "/admin/sessions"))[0] == 200
    # The console page carries no data: it loads without the key and asks for it.
    status, raw = await http_request(node.port, "GET", "/admin/")
    assert status == 200 and b"<title>lobby admin</title>" in raw


async def _room(node: LobbyNode, connect_player, name: str, guests: int = 1
                ) -> tuple[str, Any, list[Any]]:
    host = await connect_player(node, f"{name}-host")
    sid = (await host.ok("create_session", name=name, max_players=4))["session"]["session_id"]
    others = []
    for i in range(guests):
        guest = await connect_player(node, f"{name}-guest{i}")
        await guest.ok("join_session", session_id=sid)
        others.append(guest)
    return sid, host, others


async def test_admin_calls(node: LobbyNode, make_node, connect_player) -> None:
    node.ops.admin_key = KEY
    alpha, alpha_host, (alpha_guest,) = await _room(node, connect_player, "alpha")
    # A space: random session and player ids cannot contain the query below.
    beta, _, _ = await _room(node, connect_player, "the beta")
    gamma, gamma_host, _ = await _room(node, connect_player, "gamma")
    await gamma_host.ok("start_session")

    status, reply = await admin(node, "GET", "/admin/sessions")
    assert status == 200
    assert {s["session_id"] for s in reply["sessions"]} == {alpha, beta, gamma}
    assert reply["next_cursor"] is None
    _, waiting = await admin(node, "GET", "/admin/sessions?state=waiting")
    assert {s["session_id"] for s in waiting["sessions"]} == {alpha, beta}
    _, connecting = await admin(node, "GET", "/admin/sessions?state=CONNECTING")
    assert [s["session_id"] for s in connecting["sessions"]] == [gamma]
    _, by_name = await admin(node, "GET", "/admin/sessions?q=E%20BET")
    assert [s["session_id"] for s in by_name["sessions"]] == [beta]
    _, by_player = await admin(node, "GET", f"/admin/sessions?q={alpha_guest.player_id}")
    assert [s["session_id"] for s in by_player["sessions"]] == [alpha]
    _, by_id = await admin(node, "GET", f"/admin/sessions?q={gamma}")
    assert [s["session_id"] for s in by_id["sessions"]] == [gamma]
    assert (await admin(node, "GET", "/admin/sessions?state=ENDED"))[0] == 400
    assert (await admin(node, "GET", "/admin/sessions?limit=0"))[0] == 400

    # The cursor walks every session once, a small page at a time.
    node.ops.scan_batch = 1
    seen: list[str] = []
    cursor = ""
    for _ in range(10):
        _, page_ = await admin(node, "GET", f"/admin/sessions?limit=1&cursor={cursor}")
        seen += [s["session_id"] for s in page_["sessions"]]
        if page_["next_cursor"] is None:
            break
        cursor = page_["next_cursor"]
    assert sorted(seen) == sorted([alpha, beta, gamma])

    status, one = await admin(node, "GET", f"/admin/sessions/{alpha}")
    assert status == 200 and one["session"]["player_count"] == 2
    status, missing = await admin(node, "GET", "/admin/sessions/nope")
    assert status == 404 and missing["error"]["code"] == "SESSION_NOT_FOUND"
    assert (await admin(node, "POST", f"/admin/sessions/{alpha}"))[0] == 405

    # Kick: as the host's kick_player would.
    status, kicked = await admin(node, "POST", f"/admin/sessions/{alpha}/kick/"
                                 f"{alpha_guest.player_id}")
    assert status == 200 and kicked["session"]["player_count"] == 1
    assert (await alpha_guest.event("kicked"))["session_id"] == alpha
    left = await alpha_host.event("player_left")
    assert left["player_id"] == alpha_guest.player_id and left["reason"] == "kicked"
    status, err = await admin(node, "POST", f"/admin/sessions/{alpha}/kick/"
                              f"{alpha_host.player_id}")
    assert status == 409 and err["error"]["code"] == "STATE_CONFLICT"
    assert (await admin(node, "POST", f"/admin/sessions/{alpha}/kick/p_nobody"))[0] == 404

    # Close: any state; every member hears closed_by_admin.
    status, closed = await admin(node, "POST", f"/admin/sessions/{gamma}/close",
                                 {"reason": "stuck in CONNECTING"})
    assert status == 200 and closed["session"]["session_state"] == "ENDED"
    assert (await gamma_host.event("session_closed"))["reason"] == "closed_by_admin"
    assert (await admin(node, "GET", f"/admin/sessions/{gamma}"))[0] == 404
    assert (await admin(node, "POST", f"/admin/sessions/{gamma}/close"))[0] == 404
    assert (await admin(node, "POST", f"/admin/sessions/{beta}/close", [1]))[0] == 400
    await gamma_host.ok("create_session")  # in no session any more

    # Nodes: this one, with its socket count (in Redis mode, a second node too).
    await node.registry.beat()
    status, nodes = await admin(node, "GET", "/admin/nodes")
    assert status == 200
    mine = next(n for n in nodes["nodes"] if n["node_id"] == node.node_id)
    assert mine["sockets"] == node.hub.client_count == 6  # three rooms of two
    if node.mode == "redis":
        other = await make_node(redis_url=node.settings.redis_url, admin_key=KEY)
        await other.registry.beat()
        _, nodes = await admin(node, "GET", "/admin/nodes")
        assert {n["node_id"] for n in nodes["nodes"]} == {node.node_id, other.node_id}
        await other.stop()
        _, nodes = await admin(node, "GET", "/admin/nodes")
        assert {n["node_id"] for n in nodes["nodes"]} == {node.node_id}


async def test_admin_console_in_chromium(make_node, connect_player, page) -> None:  # noqa: F811
    node = await make_node(admin_key=KEY)
    alpha, alpha_host, (second_guest, _) = await _room(node, connect_player, "alpha", guests=2)
    beta, _, _ = await _room(node, connect_player, "beta")
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))

    await page.goto(f"http://127.0.0.1:{node.port}/admin/")
    await page.fill("#key", KEY)
    await page.click("#connect")
    rows = page.locator("#sessions tbody tr[data-session-id]")
    await rows.nth(1).wait_for()
    listed = set(await rows.evaluate_all("rs => rs.map(r => r.dataset.sessionId)"))
    assert listed == {alpha, beta}
    node_row = page.locator(f'#nodes tbody tr[data-node-id="{node.node_id}"]')
    await node_row.wait_for()
    assert "5" in await node_row.inner_text()  # 5 sockets

    # Search narrows the list.
    await page.fill("#search", "beta")
    await page.locator(f'#sessions tbody tr[data-session-id="{alpha}"]').wait_for(
        state="detached")
    await page.fill("#search", "")
    await page.locator(f'#sessions tbody tr[data-session-id="{alpha}"]').click()
    members = page.locator("#members tbody tr[data-player-id]")
    await members.nth(2).wait_for()

    # Kick from the page.
    await page.click(f'button.kick[data-player-id="{second_guest.player_id}"]')
    assert (await second_guest.event("kicked"))["session_id"] == alpha
    await page.locator(f'#members tr[data-player-id="{second_guest.player_id}"]').wait_for(
        state="detached")

    # Close from the page: the room's players get session_closed closed_by_admin.
    await page.fill("#close-reason", "stuck room")
    await page.click("#close-session")
    closed = await alpha_host.event("session_closed")
    assert closed == {"type": "session_closed", "session_id": alpha, "reason": "closed_by_admin"}
    await page.locator(f'#sessions tbody tr[data-session-id="{alpha}"]').wait_for(
        state="detached")
    assert await rows.count() == 1
    assert (await admin(node, "GET", f"/admin/sessions/{beta}"))[0] == 200  # the other stays
