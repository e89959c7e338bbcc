"""The browser client (clients/js/lobby.js) and the /play/ demo page in real headless
Chromium: two pages play host and guest through a lifecycle, and the guest's page
reload resumes into its seat."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import expect

from lobby.client import connect
from tests.browser import browser, watch_frames  # noqa: F401
from tests.conftest import http_request, ws_url
from tests.fleetiq_fixtures import fleetiq_with_servers

ROOT = Path(__file__).resolve().parent.parent


async def test_play_serves_the_demo_and_lobby_js(node) -> None:
    status, body = await http_request(node.port, "GET", "/play/lobby.js")
    assert status == 200
    assert body == (ROOT / "clients" / "js" / "lobby.js").read_bytes()
    status, page = await http_request(node.port, "GET", "/play/")
    assert status == 200 and b'<script type="module" src="play.js">' in page
    assert (await http_request(node.port, "GET", "/play"))[0] == 308
    for path in ("/play/../pyproject.toml", "/play/__init__.py", "/play/x/lobby.js"):
        assert (await http_request(node.port, "GET", path))[0] == 404, path


async def test_host_and_guest_pages_through_a_lifecycle_and_a_reload(
    node, browser  # noqa: F811
) -> None:
    base = f"http://127.0.0.1:{node.port}/play/"
    host_ctx, guest_ctx = await browser.new_context(), await browser.new_context()
    host, guest = await host_ctx.new_page(), await guest_ctx.new_page()
    watch_frames(host)
    watch_frames(guest)
    errors: list[str] = []
    for page in (host, guest):
        page.on("pageerror", lambda exc: errors.append(str(exc)))

    # The host connects, hosts; the endpoint it talks to is shown.
    await host.goto(base)
    await expect(host.locator("#endpoint")).to_have_text(ws_url(node))
    await host.fill("#name", "alice")
    await host.click("#connect-btn")
    await expect(host.locator("#state")).to_have_text("online")
    await host.fill("#host-name", "Friday")
    await host.fill("#host-max", "3")
    await host.click("#host-btn")
    await expect(host.locator("#players li")).to_have_text(["alice (host) (you)"])
    await expect(host.locator("#room-state")).to_have_text("WAITING 1/3")

    # The guest browses and joins; the host's room shows it live.
    await guest.goto(base)
    await guest.fill("#name", "bob")
    await guest.click("#connect-btn")
    row = guest.locator("#sessions li", has_text="Friday")
    await expect(row).to_have_text("Friday — 1/3Join")
    await row.locator("button.join").click()
    await expect(guest.locator("#room-state")).to_have_text("WAITING 2/3")
    await expect(host.locator("#players li")).to_have_count(2)
    await expect(host.locator("#players li").nth(1)).to_have_text("bobKick")
    guest_id = await guest.locator("#me").get_attribute("data-player-id")
    assert guest_id and guest_id.startswith("p_")

    # A reload: the page comes back as the same player, in its seat.
    await guest.reload()
    await expect(guest.locator("#state")).to_have_text("online")
    await expect(guest.locator("#me")).to_have_attribute("data-player-id", guest_id)
    await expect(guest.locator("#room-state")).to_have_text("WAITING 2/3")
    await expect(guest.locator("#players li")).to_have_text(["alice (host)", "bob (you)"])
    await expect(guest.locator("#log")).to_contain_text("resumed as bob")
    # The lobby agrees: still two members, and the host saw nobody leave.
    async with connect(ws_url(node), name="observer") as observer:
        page = await observer.list_sessions()
        (listed,) = page.sessions
        assert [p.player_id for p in listed.players][1] == guest_id
        assert listed.player_count == 2
    assert "player_left" not in await host.locator("#log").inner_text()

    # The host starts; both pages show the game server's endpoint.
    await host.click("#start-btn")
    for page in (host, guest):
        await expect(page.locator("#server")).to_have_text("Game server: 127.0.0.1:6060")
        await expect(page.locator("#room-state")).to_have_text("CONNECTING 2/3")
    await expect(guest.locator("#log")).to_contain_text("session_started")

    # The guest leaves; the host sees it.
    await guest.click("#leave-btn")
    await expect(guest.locator("#lobby")).to_be_visible()
    await expect(host.locator("#players li")).to_have_count(1)
    await expect(host.locator("#log")).to_contain_text("player_left (left)")
    assert errors == []
    await host_ctx.close()
    await guest_ctx.close()


JS_API = """async () => {
  const { connect, LobbyError } = await import("/play/lobby.js");
  const url = `ws://${location.host}/ws`;
  const out = {};
  const host = await connect(url, { name: "jshost", storage: null });
  const guest = await connect(url, { name: "jsguest", storage: null, timeout: 5 });
  const room = await host.createSession("JS", 3, undefined, { attributes: { map: "dust" } });
  const joinedEvent = host.nextEvent("player_joined");
  const joined = await guest.joinSession({ joinCode: room.join_code });
  out.joined = (await joinedEvent).name === "jsguest" && joined.session_id === room.session_id;
  out.hostSeesTwo = host.session.player_count;
  const page = await guest.listSessions(10, undefined, { filter: { map: "dust" } });
  out.listed = page.sessions.length;
  const updated = guest.nextEvent("session_updated");
  await host.updateSession({ attributes: { mode: "ctf" } });
  out.guestMirror = (await updated, guest.session.attributes);
  const readied = host.nextEvent("player_ready");
  await guest.setReady(true);
  out.ready = (await readied).player_id === guest.playerId;
  const said = guest.nextEvent("chat_message");
  await host.sendChat("gl hf");
  out.chat = [(await said).text, (await guest.chatHistory()).map((c) => c.text)];
  const promoted = guest.nextEvent("host_changed");
  await host.promotePlayer(guest.playerId);
  await promoted;
  out.guestIsHost = guest.isHost();
  try { await host.startSession(); } catch (err) {
    out.notHost = err instanceof LobbyError ? err.code : String(err);
  }
  const started = host.nextEvent("session_started");
  const session = await guest.startSession();
  out.endpoint = [(await started).server_endpoint, session.server_endpoint,
                  host.session.server_endpoint];
  try { await guest.joinTicket(); } catch (err) { out.ticket = err.code; }
  await host.ping();
  await host.leaveSession();
  out.hostAfterLeave = host.session;
  host.close(); guest.close();
  return out;
}"""


async def test_lobby_js_api_in_the_browser(node, browser) -> None:  # noqa: F811
    page = await browser.new_page()
    watch_frames(page)
    await page.goto(f"http://127.0.0.1:{node.port}/play/")
    out = await page.evaluate(JS_API)
    assert out == {
        "joined": True, "hostSeesTwo": 2, "listed": 1, "ready": True,
        "chat": ["gl hf", ["gl hf"]],
        "guestMirror": {"map": "dust", "mode": "ctf"}, "guestIsHost": True,
        "notHost": "NOT_HOST", "endpoint": ["127.0.0.1:6060"] * 3,
        "ticket": "TICKETS_DISABLED", "hostAfterLeave": None,
    }


SLOW_START = """async () => {
  const { connect, LobbyError } = await import("/play/lobby.js");
  const url = `ws://${location.host}/ws`;
  const patient = await connect(url, { name: "patient", storage: null, timeout: 0.5 });
  await patient.createSession("slow");
  const started = await patient.startSession();
  const hasty = await connect(url, { name: "hasty", storage: null, timeout: 0.5,
                                     startTimeout: 0.5 });
  await hasty.createSession("hasty");
  let late = null;
  try { await hasty.startSession(); } catch (err) {
    late = err instanceof LobbyError ? err.code : String(err);
  }
  patient.close(); hasty.close();
  return { endpoint: started.server_endpoint, late };
}"""


async def test_lobby_js_start_waits_for_its_claim(make_node, browser) -> None:  # noqa: F811
    """startSession waits startTimeout (40 s) for its reply, which comes after the
    claim GameLift may hold back; other requests keep their timeout (0.5 s here)."""
    with fleetiq_with_servers("js-slow-claims", 2) as fleetiq:
        node = await make_node(fleetiq_group="js-slow-claims", aws_endpoint_url=fleetiq.url)
        fleetiq.inject_faults({"ClaimGameServer": [{"delay": 1.0}, {"delay": 1.0}]})
        page = await browser.new_page()
        watch_frames(page)
        await page.goto(f"http://127.0.0.1:{node.port}/play/")
        assert await page.evaluate(SLOW_START) == {"endpoint": "10.0.0.0:6060",
                                                    "late": "TIMEOUT"}
