"""The node's cache of list_sessions records and views, and encode()'s spliced arrays."""

from __future__ import annotations

import json

from lobby import protocol as p
from lobby.app import LobbyNode
from lobby.store.search import LISTED, RecordCache


def _text(sid: str, players: int = 1) -> bytes:
    return json.dumps({"id": sid, "members": [{"id": f"{sid}-{i}"} for i in range(players)],
                       "pw": None}).encode()


def test_encode_splices_encoded_lists_as_json_arrays() -> None:
    views = [{"a": 1, "b": "é\""}, {"c": [None, True]}]
    message = p.ok_reply("list_sessions", "r\"1", {"sessions": views, "next_cursor": None})
    spliced = {**message, "sessions": p.EncodedList(p.encode(v) for v in views)}
    assert json.loads(p.encode(spliced)) == json.loads(p.encode(message))
    assert json.loads(p.encode({"only": p.EncodedList()})) == {"only": []}
    assert json.loads(p.encode({"x": p.EncodedList(["1", "[2]"]), "y": 3})) == {
        "x": [1, [2]], "y": 3}


def test_a_record_text_is_decoded_and_rendered_once() -> None:
    cache = RecordCache(size=8)
    renders: list[str] = []

    def render(rec: dict) -> str:
        renders.append(rec["id"])
        return p.encode({"session_id": rec["id"], "players": len(rec["members"])})

    first = cache.records([_text("a"), _text("b")])
    again = cache.records([_text("b"), _text("a")])
    assert [r["id"] for r in first] == ["a", "b"]
    assert again[0] is first[1] and again[1] is first[0]
    assert (cache.hits, cache.misses) == (2, 2)
    assert [cache.view(r, render) for r in first + again] == [
        '{"session_id":"a","players":1}', '{"session_id":"b","players":1}',
        '{"session_id":"b","players":1}', '{"session_id":"a","players":1}']
    assert renders == ["a", "b"]
    # A room that changed has a new text: a new record and a new view, never the old.
    changed = cache.records([_text("a", players=2)])[0]
    assert changed is not first[0] and len(changed["members"]) == 2
    assert cache.view(changed, render) == '{"session_id":"a","players":2}'
    # Records that did not come from the cache are rendered every time.
    loose = json.loads(_text("z"))
    cache.view(loose, render)
    cache.view(loose, render)
    assert renders == ["a", "b", "a", "z", "z"]


def test_the_least_recently_used_records_go_first() -> None:
    cache = RecordCache(size=3)
    a, b, c = cache.records([_text("a"), _text("b"), _text("c")])
    cache.records([_text("a")])  # a used again: b is now the oldest
    (d,) = cache.records([_text("d")])
    assert len(cache._by_text) == len(cache._by_id) == 3
    assert cache.records([_text("a")])[0] is a
    assert cache.records([_text("c")])[0] is c
    assert cache.records([_text("b")])[0] is not b  # evicted: decoded anew
    # An evicted record still renders right (uncached), whatever reused its id().
    assert cache.view(b, lambda r: r["id"]) == "b"
    assert d["id"] == "d"


async def test_listed_rooms_stay_fresh_over_real_sockets(node: LobbyNode, connect_player
                                                         ) -> None:
    """Repeated pages come from the cache (Redis mode), and a room that changed is
    shown as it is now: its player count, its attributes, its password room's players
    to a member only."""
    host = await connect_player(node, "host")
    sid = (await host.ok("create_session", max_players=4,
                         attributes={"mode": "ctf"}))["session"]["session_id"]
    locked = await connect_player(node, "pw-host")
    await locked.ok("create_session", max_players=4, password="secret")
    browser = await connect_player(node, "browser")

    def room(reply: dict) -> dict:
        return next(s for s in reply["sessions"] if s["session_id"] == sid)

    first = await browser.ok("list_sessions", filter={"mode": "ctf"})
    hits = LISTED.hits
    again = await browser.ok("list_sessions", filter={"mode": "ctf"})
    assert again["sessions"] == first["sessions"]
    if node.mode == "redis":
        assert LISTED.hits > hits  # the same texts: decoded and rendered before
    guest = await connect_player(node, "guest")
    await guest.ok("join_session", session_id=sid)
    await host.ok("update_session", attributes={"map": "dust"})
    now = room(await browser.ok("list_sessions", filter={"mode": "ctf"}))
    assert now["player_count"] == 2 and now["attributes"] == {"mode": "ctf", "map": "dust"}
    assert [p["name"] for p in now["players"]] == ["host", "guest"]
    # A password room: the count for everyone, the players for its members only.
    pages = {who: await player.ok("list_sessions", has_password=True)
             for who, player in (("member", locked), ("browser", browser), ("again", locked))}
    assert [s["players"] for s in pages["browser"]["sessions"]] == [[]]
    assert [s["host_id"] for s in pages["browser"]["sessions"]] == [None]
    for who in ("member", "again"):
        assert [[p["name"] for p in s["players"]] for s in pages[who]["sessions"]] == [
            ["pw-host"]]
