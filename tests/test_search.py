"""list_sessions search: filters, sorts and cursors, against a brute-force filter.

The population is created through the store API (2,000 sessions over WebSocket would
take most of a minute; the store calls are what a node makes for each request), in
both stores. Every filter/sort combination is paged through and compared with a
brute-force filter over every session record, first on a still population, then
while players join and leave and hosts change attributes between the pages, then on
the still population again (the indexes followed every change).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from lobby.app import LobbyNode
from lobby.errors import ErrorCode
from lobby.protocol import attr_value
from lobby.store.search import SNAPSHOT_MAX
from tests.test_store_conformance import PW, T0, Harness, fails, store

__all__ = ["store"]

MODES = ["ctf", "dm", "koth", "race"]
REGIONS = ["eu", "us", "asia"]
MAPS = ["dust", "aztec", "nuke", "inferno", "train"]
INDEXED = ("mode", "region", "ranked")  # map and skill are not indexed
SORTS = ["newest", "oldest", "most_players", "fewest_players"]
FILTERS: list[dict[str, Any]] = [
    {},
    {"conds": [("mode", "eq", "ctf")]},
    {"conds": [("mode", "eq", "ctf"), ("region", "eq", "eu")]},
    {"conds": [("mode", "in", ["dm", "race"]), ("region", "ne", "us")]},
    {"conds": [("skill", "ge", 5)]},
    {"conds": [("skill", "lt", 3), ("mode", "eq", "koth")], "min_free": 2},
    {"conds": [("ranked", "eq", True), ("skill", "le", attr_value(4.5))]},
    {"conds": [("map", "eq", "dust")], "has_pw": False},  # an unindexed equality
    {"conds": [("map", "in", ["nuke", "train"]), ("skill", "gt", 1)], "has_pw": True},
    {"conds": [("region", "eq", "asia"), ("ranked", "ne", False)], "min_free": 3},
    {"conds": [("mode", "eq", "none-such")]},
]


def _same(a: Any, b: Any) -> bool:
    return (isinstance(a, bool) == isinstance(b, bool)
            and isinstance(a, str) == isinstance(b, str) and a == b)


def brute_match(rec: dict[str, Any], q: dict[str, Any]) -> bool:
    """The rules of protocol.md, written again without the stores' code."""
    if (rec["state"] != "WAITING" or len(rec["members"]) >= rec["max"]
            or rec.get("vis") == "unlisted" or rec.get("locked")):
        return False
    if q.get("min_free") is not None and rec["max"] - len(rec["members"]) < q["min_free"]:
        return False
    if q.get("has_pw") is not None and (rec["pw"] is not None) != q["has_pw"]:
        return False
    attrs = rec.get("attrs") or {}
    for key, op, want in q.get("conds", []):
        present = key in attrs
        v = attrs.get(key)
        if op == "eq":
            ok = present and _same(v, want)
        elif op == "ne":
            ok = not present or not _same(v, want)
        elif op == "in":
            ok = present and any(_same(v, w) for w in want)
        else:
            number = present and not isinstance(v, bool | str)
            ok = number and {"lt": v < want, "le": v <= want, "gt": v > want,
                             "ge": v >= want}[op] if number else False
        if not ok:
            return False
    return True


def sort_key(rec: dict[str, Any], sort: str) -> tuple[int, ...]:
    if sort in ("newest", "oldest"):
        return (rec["seq"],)
    return (len(rec["members"]), rec["seq"])


def expected(records: list[dict[str, Any]], q: dict[str, Any], sort: str,
             h: Harness | None = None) -> list[str]:
    if h is not None and h.buckets > 1:
        return expected_merged(records, q, sort, h)
    desc = sort in ("newest", "most_players")
    ordered = sorted(records, key=lambda r: sort_key(r, sort), reverse=desc)
    if sort in ("most_players", "fewest_players"):
        # The order is taken over the first SNAPSHOT_MAX candidates of the index
        # lookups (eq and in on indexed keys), as protocol.md says.
        lookups = {"conds": [c for c in q.get("conds", [])
                             if c[1] in ("eq", "in") and c[0] in INDEXED]}
        ordered = [r for r in ordered if brute_match(r, lookups)][:SNAPSHOT_MAX]
    return [r["id"] for r in ordered if brute_match(r, q)]


def expected_merged(records: list[dict[str, Any]], q: dict[str, Any], sort: str,
                    h: Harness) -> list[str]:
    """A store of several buckets: each bucket's candidates as one bucket would
    give them, merged by creation time (and player count for those sorts)."""
    keys = h.store.keys  # type: ignore[attr-defined]
    by_bucket: dict[int, list[dict[str, Any]]] = {}
    for rec in records:
        by_bucket.setdefault(keys.bucket(rec["id"]), []).append(rec)
    ids = {sid for part in by_bucket.values() for sid in expected(part, q, sort)}
    chosen = [r for r in records if r["id"] in ids]
    merge = {
        "newest": lambda r: (-r["created"], r["id"]),
        "oldest": lambda r: (r["created"], r["id"]),
        "most_players": lambda r: (-len(r["members"]), -r["created"], r["id"]),
        "fewest_players": lambda r: (len(r["members"]), r["created"], r["id"]),
    }[sort]
    return [r["id"] for r in sorted(chosen, key=merge)]


class Population:
    def __init__(self, h: Harness, rng: random.Random) -> None:
        self.h = h
        self.rng = rng
        self.ids: list[str] = []
        self.hosts: dict[str, str] = {}
        self.members: dict[str, list[str]] = {}
        self.free: list[str] = []
        self.n = 0
        self.now = T0
        self._records: dict[str, dict[str, Any]] = {}
        self.dirty: set[str] = set()  # sessions changed since records() last read them

    async def player(self) -> str:
        self.n += 1
        pid = f"p{self.n}"
        await self.h.store.new_player(pid, pid, f"t{pid}", f"n1.{pid}", self.now)
        return pid

    def attrs(self) -> dict[str, Any]:
        r = self.rng
        out: dict[str, Any] = {}
        for key, values in (("mode", MODES), ("region", REGIONS), ("map", MAPS)):
            if r.random() < 0.9:
                out[key] = r.choice(values)
        if r.random() < 0.8:
            out["skill"] = attr_value(r.choice([r.randint(0, 9), r.random() * 10]))
        if r.random() < 0.7:
            out["ranked"] = r.random() < 0.5
        return out

    async def create(self, count: int) -> None:
        r = self.rng
        for _ in range(count):
            host = await self.player()
            sid = f"s{len(self.ids):04d}"
            size = r.randint(2, 8)
            self.now += 1
            await self.h.store.create_session(
                host, sid, "", size, PW if r.random() < 0.2 else None, self.now,
                attributes=self.attrs(), indexed=INDEXED,
                visibility="unlisted" if r.random() < 0.1 else "public")
            self.ids.append(sid)
            self.dirty.add(sid)
            self.hosts[sid] = host
            self.members[sid] = [host]
            for _ in range(r.randint(0, min(3, size - 1))):
                await self.join(sid)
            if r.random() < 0.05:
                await self.h.store.update_session(host, {"locked": True}, self.now)

    async def join(self, sid: str) -> bool:
        pid = self.free.pop() if self.free else await self.player()
        self.now += 1
        try:
            await self.h.store.join_session(pid, sid, PW, self.now)
        except Exception:
            self.free.append(pid)
            return False
        self.members[sid].append(pid)
        return True

    async def churn(self, touched: set[str], steps: int) -> None:
        """Other clients at work between two pages: joins, leaves, settings."""
        r = self.rng
        for _ in range(steps):
            sid = r.choice(self.ids)
            touched.add(sid)
            self.dirty.add(sid)
            roll = r.random()
            self.now += 1
            guests = self.members[sid][1:]
            if roll < 0.45:
                await self.join(sid)
            elif roll < 0.85 and guests:
                pid = r.choice(guests)
                await self.h.store.leave_session(pid, self.now)
                self.members[sid].remove(pid)
                self.free.append(pid)
            else:
                await self.h.store.update_session(
                    self.hosts[sid], {"attrs": self.attrs()}, self.now, indexed=INDEXED)

    async def records(self) -> list[dict[str, Any]]:
        """Every session's record as the store holds it (read again where changed)."""
        for sid in sorted(self.dirty):
            rec = await self.h.store.get_session(sid)
            assert rec is not None
            self._records[sid] = rec
        self.dirty.clear()
        return [self._records[sid] for sid in self.ids]


async def pages(h: Harness, q: dict[str, Any], sort: str, limit: int,
                between: Any = None) -> list[list[dict[str, Any]]]:
    query = {**q, "sort": sort, "indexed": INDEXED}
    out: list[list[dict[str, Any]]] = []
    cursor = None
    for _ in range(2000):  # bounded: a cursor that never ends must fail, not hang
        recs, cursor = await h.store.list_sessions(limit, cursor, query=query)
        assert len(recs) <= limit
        out.append(recs)
        if cursor is None:
            return out
        if between is not None:
            await between()
    raise AssertionError("paging did not end")


async def test_search_matches_a_brute_force_filter(store: Harness) -> None:
    h = store
    rng = random.Random(14)
    pop = Population(h, rng)
    await pop.create(2000)

    async def still_population_agrees() -> None:
        records = await pop.records()
        for q in FILTERS:
            for sort in SORTS:
                got = [r["id"] for page in await pages(h, q, sort, 25) for r in page]
                assert got == expected(records, q, sort, h), (q, sort)

    await still_population_agrees()

    for q in FILTERS:
        for sort in SORTS:
            touched: set[str] = set()
            before = {r["id"]: r for r in await pop.records()}
            want = expected(list(before.values()), q, sort, h)
            got_pages = await pages(h, q, sort, 20, lambda t=touched: pop.churn(t, 3))
            got = [r for page in got_pages for r in page]
            got_ids = [r["id"] for r in got]
            assert len(got_ids) == len(set(got_ids)), ("duplicates", q, sort)
            for rec in got:  # each session shown matched when its page was read
                assert brute_match(rec, q), (rec["id"], q, sort)
            # Nothing that stayed unchanged (and listed) is skipped ...
            steady = [sid for sid in want if sid not in touched]
            shown = [sid for sid in got_ids if sid in set(steady)]
            if h.buckets > 1 and sort in ("most_players", "fewest_players"):
                # Buckets' pages are merged by the counts of when each page is
                # read: across buckets, the order follows the changes.
                assert sorted(shown) == sorted(steady), (q, sort)
            else:
                assert shown == steady, (q, sort)
            # ... and no unchanged session shows up that should not.
            extra = [sid for sid in got_ids if sid not in touched and sid not in want]
            assert extra == [], (q, sort)

    await still_population_agrees()


async def test_bad_cursors_and_expiry(store: Harness) -> None:
    h = store
    pop = Population(h, random.Random(1))
    await pop.create(30)
    for sort, cursor in [("newest", "abc"), ("newest", "p0123abcd.3"), ("most_players", "17"),
                         ("oldest", "-1"), ("fewest_players", "pzz.x"),
                         ("most_players", "p.1")]:
        await fails(ErrorCode.BAD_REQUEST,
                    h.store.list_sessions(5, cursor, query={"sort": sort}))
    _, cursor = await h.store.list_sessions(5, None, query={"sort": "most_players"})
    # Several buckets: one cursor per bucket ("b" and theirs, comma-separated).
    assert cursor is not None and cursor.startswith("p" if h.buckets == 1 else "b")
    # A well-formed cursor of an order that no longer exists.
    await fails(ErrorCode.BAD_REQUEST, h.store.list_sessions(
        5, "p0000000000000000.5", query={"sort": "most_players"}))
    # Plain list_sessions (no query) keeps its old pages and cursors.
    recs, cursor = await h.store.list_sessions(10, None)
    assert cursor is not None and (cursor.isdigit() or h.buckets > 1)
    more, _ = await h.store.list_sessions(10, cursor)
    order = "seq" if h.buckets == 1 else "created"
    assert [r[order] for r in recs + more] == sorted(
        (r[order] for r in recs + more), reverse=True)


async def test_list_sessions_filters_over_the_wire(node: LobbyNode, connect_player) -> None:
    hosts = []
    for i, (mode, region, skill) in enumerate(
            [("ctf", "eu", 3), ("ctf", "us", 5), ("dm", "eu", 7), ("ctf", "eu", 9)]):
        host = await connect_player(node, f"h{i}")
        await host.ok("create_session", max_players=4,
                      attributes={"mode": mode, "region": region, "skill": skill})
        hosts.append(host)
    await hosts[3].ok("update_session", password="pw")
    guest = await connect_player(node, "guest")
    await guest.ok("join_session", session_id=(await guest.ok("list_sessions"))["sessions"][-1][
        "session_id"])  # the first room gets a second player
    browser = await connect_player(node, "browser")

    async def names(**fields: Any) -> list[str]:
        reply = await browser.ok("list_sessions", **fields)
        assert all(s["join_code"] is None for s in reply["sessions"])
        # By the room's default name ("h3's game"): who is in a password room is
        # not shown to a browser outside it.
        return [s["name"].removesuffix("'s game") for s in reply["sessions"]]

    assert await names(filter={"mode": "ctf", "region": "eu"}) == ["h3", "h0"]
    assert await names(filter={"mode": "ctf"}, sort="most_players") == ["h0", "h3", "h1"]
    assert await names(filter={"skill": {"ge": 5}}, sort="oldest") == ["h1", "h2", "h3"]
    assert await names(filter={"skill": {"in": [3.0, 7]}}) == ["h2", "h0"]
    assert await names(filter={"mode": {"ne": "ctf"}}) == ["h2"]
    assert await names(has_password=False, min_free_seats=3.0) == ["h2", "h1"]
    assert await names(filter={"mode": "ctf"}, sort="fewest_players", limit=1) == ["h1"]
    page = await browser.ok("list_sessions", sort="fewest_players", limit=2)
    rest = await browser.ok("list_sessions", sort="fewest_players", limit=2,
                            cursor=page["next_cursor"])
    assert len(page["sessions"]) + len(rest["sessions"]) == 4 and rest["next_cursor"] is None

    for bad in [
        {"filter": {"mode": {"like": "c%"}}}, {"filter": {"skill": {"ge": "5"}}},
        {"filter": {"mode": {"in": list(range(11))}}}, {"filter": {"mode": {"in": []}}},
        {"filter": {"mode": {"eq": "ctf", "ne": "dm"}}}, {"filter": {"Mode": "ctf"}},
        {"filter": {"mode": None}}, {"sort": "best"}, {"cursor": "nope"},
        {"sort": "most_players", "cursor": "12"}, {"min_free_seats": 0},
        {"has_password": "no"},
    ]:
        await browser.error("list_sessions", "BAD_REQUEST", **bad)


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_redis_indexes_hold_exactly_the_listed_sessions(store: Harness) -> None:
    h = store
    pop = Population(h, random.Random(7))
    await pop.create(150)
    await pop.churn(set(), 300)
    client = h.client  # type: ignore[attr-defined]
    prefix = h.store.keys.bucket_prefix(0)  # type: ignore[attr-defined]
    records = await pop.records()
    listed = {r["id"]: r for r in records if brute_match(r, {})}
    want: dict[str, set[str]] = {}
    for r in listed.values():
        for key in INDEXED:
            if key in r["attrs"]:
                v = r["attrs"][key]
                token = (f"{key}=b:{int(v)}" if isinstance(v, bool) else f"{key}=s:{v}"
                         if isinstance(v, str) else f"{key}=n:{v:.14g}")
                want.setdefault(token, set()).add(r["id"])
    have: dict[str, set[str]] = {}
    async for key in client.scan_iter(f"{prefix}ix:*"):
        token = key.decode()[len(prefix) + 3:]
        have[token] = {m.decode() for m in await client.zrange(key, 0, -1)}
    assert have == want
    assert {m.decode() for m in await client.zrange(f"{prefix}open", 0, -1)} == set(listed)
    scores = dict(await client.zrange(f"{prefix}openp", 0, -1, withscores=True))
    assert {k.decode(): int(v) for k, v in scores.items()} == {
        sid: len(r["members"]) * 10**12 + r["seq"] for sid, r in listed.items()}
    assert await client.keys(f"{prefix}tmp:*") == []  # the searches left no temp keys
