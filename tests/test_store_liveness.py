"""Node liveness and reconcile, against both stores (the conformance harness).

A sweep is its caller's heartbeat; a node whose heartbeat lapsed has its
players' sockets dropped by whichever node sweeps next (issue 10 item 3), and
a node that could not hear the store checks its sockets against it (item 4).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from lobby.store.base import Change, LiveClient, Timeouts, Verdict
from lobby.store.redis import RedisStore
from tests.test_store_conformance import (  # noqa: F401  (the store fixture)
    HOLD,
    QUIET,
    T0,
    Harness,
    ids,
    name,
    open_harness,
    store,
    tokh,
)

NODE_MS = 1_000
LIVE = Timeouts(QUIET.idle_ms, QUIET.connecting_ms, QUIET.in_progress_ms,
                node_ms=NODE_MS, hold_ms=HOLD)


async def beat(h: Harness, node: str, now: int, limit: int = 100, node_ms: int = NODE_MS,
               hold_ms: int = HOLD) -> tuple[list[Change], bool]:
    timeouts = Timeouts(LIVE.idle_ms, LIVE.connecting_ms, LIVE.in_progress_ms,
                        node_ms=node_ms, hold_ms=hold_ms)
    result = await h.store.sweep(now, timeouts, limit, node=node)
    assert result.epoch == h.epoch
    return result.changes, result.revived


async def player(h: Harness, pid: str, node: str, now: int = T0) -> None:
    await h.store.new_player(pid, name(pid), tokh(pid), f"{node}.{pid}", now)


async def held(h: Harness) -> int:
    return int((await h.store.stats())["held_seats"])


async def test_dead_node_members_get_a_hold_then_time_out_with_host_migration(
    store: Harness  # noqa: F811
) -> None:
    h = store
    await beat(h, "n1", T0)
    await player(h, "alice", "n1")  # the host, on the node that dies
    await player(h, "bob", "n2")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    await h.store.join_session("bob", "s1", None, T0 + 1)
    await h.drain(1)

    # n1 beat at T0, good until T0 + NODE_MS: not dead before that.
    assert await beat(h, "n2", T0 + NODE_MS - 1) == ([], True)
    assert await held(h) == 0
    changes, revived = await beat(h, "n2", T0 + NODE_MS + 1)
    assert await held(h) == 1  # alice's seat, as if her socket had closed
    dropped = await h.store.get_session("s1")
    assert dropped is not None and not revived and changes == [Change("s1", dropped, None)]
    # ...and the others are told, as for any drop.
    assert [(ev["e"], ev["player_id"], ev["hold_until"]) for _, ev in await h.drain(1)] == [
        ("player_disconnected", "alice", (T0 + NODE_MS + 1 + HOLD) / 1000)]
    # The hold runs from when n1 was found dead; then the usual timeout.
    assert await beat(h, "n2", T0 + NODE_MS + HOLD) == ([], False)
    changes, _ = await beat(h, "n2", T0 + NODE_MS + 1 + HOLD)
    after = await h.store.get_session("s1")
    assert after is not None and changes == [Change("s1", after, None)]
    assert (ids(after), after["host"]) == (["bob"], "bob")
    events = await h.drain(2)
    assert [(ev["e"], ev.get("player_id"), ev.get("reason")) for _, ev in events] == [
        ("player_left", "alice", "timeout"), ("host_changed", None, None)]
    listed, _ = await h.store.list_sessions(10, None)
    assert [(s["id"], len(s["members"])) for s in listed] == [("s1", 1)]


async def test_dead_node_player_resumes_within_the_hold(store: Harness) -> None:  # noqa: F811
    h = store
    await beat(h, "n1", T0)
    await player(h, "alice", "n1")
    await player(h, "bob", "n2")
    await h.store.create_session("bob", "s1", "", 4, None, T0)
    await h.store.join_session("alice", "s1", None, T0)
    await beat(h, "n2", T0 + NODE_MS + 1)
    assert await held(h) == 1
    res = await h.store.resume("alice", tokh("alice"), "n2.alice2", T0 + NODE_MS + 5)
    assert res is not None and res.player.session_id == "s1"
    assert await held(h) == 0
    # The new socket's node is alive: nothing is dropped later.
    await beat(h, "n2", T0 + NODE_MS + HOLD + 10)
    rec = await h.store.get_session("s1")
    assert rec is not None and ids(rec) == ["bob", "alice"]


async def test_players_who_moved_off_a_dead_node_keep_their_socket(
    store: Harness  # noqa: F811
) -> None:
    h = store
    await beat(h, "n1", T0)
    await player(h, "alice", "n1")
    await h.store.create_session("alice", "s1", "", 4, None, T0)
    # She resumed on n2 before n1 died.
    assert await h.store.resume("alice", tokh("alice"), "n2.x", T0 + 5) is not None
    await h.drain()
    await beat(h, "n2", T0 + NODE_MS + 1)
    assert await held(h) == 0
    await beat(h, "n2", T0 + NODE_MS + HOLD + 10)
    assert await h.store.get_session("s1") is not None


async def test_a_dead_nodes_sessionless_players_are_kept_for_the_hold(store: Harness) -> None:  # noqa: F811
    h = store
    await beat(h, "n1", T0)
    await player(h, "alice", "n1")
    await beat(h, "n2", T0 + NODE_MS + 1)
    # Kept for the hold only, as after a disconnect.
    assert await h.store.resume("alice", tokh("alice"), "n2.a", T0 + NODE_MS + HOLD) is not None


async def test_dead_node_sessionless_record_goes_after_the_hold(store: Harness) -> None:  # noqa: F811
    h = store
    await beat(h, "n1", T0)
    await player(h, "carol", "n1")
    now = T0 + NODE_MS + 1
    await beat(h, "n2", now, hold_ms=50)
    await h.until_player_expired("carol")  # Redis: the key's PX, in real time
    assert await h.store.resume("carol", tokh("carol"), "n2.c", now + 51) is None


async def test_dead_nodes_are_dropped_in_bounded_batches(store: Harness) -> None:  # noqa: F811
    h = store
    await beat(h, "n1", T0)
    for i in range(25):
        await player(h, f"p{i}", "n1")
    await player(h, "host", "n2")
    await h.store.create_session("host", "s1", "", 16, None, T0)
    for i in range(15):
        await h.store.join_session(f"p{i}", "s1", None, T0)
    now = T0 + NODE_MS + 1
    first = await h.store.sweep(now, LIVE, 2, node="n2")  # 10 * limit sockets per call
    assert first.more is True and 5 <= await held(h) <= 15
    second = await h.store.sweep(now, LIVE, 2, node="n2")
    assert second.more is False
    assert await held(h) == 15  # every member; the 10 others are session-less
    assert (await h.store.sweep(now, LIVE, 2, node="n2")).more is False


async def test_a_node_taken_for_dead_is_told_when_it_beats_again(store: Harness) -> None:  # noqa: F811
    h = store
    assert (await beat(h, "n1", T0))[1] is True  # new
    assert (await beat(h, "n1", T0 + NODE_MS - 1))[1] is False  # in time
    await beat(h, "n2", T0 + 2 * NODE_MS)  # n2 finds n1 silent
    assert (await beat(h, "n1", T0 + 2 * NODE_MS + 1))[1] is True


def live(pid: str, node: str, sid: str | None, conn: str | None = None) -> LiveClient:
    return LiveClient(pid, name(pid), tokh(pid), conn or f"{node}.{pid}", sid)


async def test_reconcile_verdicts(store: Harness) -> None:  # noqa: F811
    h = store
    for pid in ("host", "kicked", "replaced", "fine", "closed", "solo"):
        await player(h, pid, "n1")
    await h.store.create_session("host", "s1", "", 8, None, T0)
    for pid in ("kicked", "replaced", "fine"):
        await h.store.join_session(pid, "s1", None, T0)
    await h.store.create_session("closed", "s2", "", 8, None, T0)
    # What happened while n1 could not hear the store:
    await h.store.kick("host", "kicked", T0 + 1)
    await h.store.resume("replaced", tokh("replaced"), "n2.other", T0 + 2)
    await h.store.complete("s2", "completed", T0 + 3)
    verdicts = await h.store.reconcile([
        live("host", "n1", "s1"), live("kicked", "n1", "s1"), live("replaced", "n1", "s1"),
        live("fine", "n1", "s1"), live("closed", "n1", "s2"), live("solo", "n1", None),
    ], T0 + 10)
    s1 = await h.store.get_session("s1")
    assert s1 is not None
    assert verdicts == [Verdict("OK", s1), Verdict("OUT", s1), Verdict("REPLACED", None),
                        Verdict("OK", s1), Verdict("OUT", None), Verdict("OK", None)]
    assert await h.store.reconcile([], T0) == []


async def test_reconcile_takes_back_sockets_dropped_for_a_dead_node(
    store: Harness  # noqa: F811
) -> None:
    h = store
    await beat(h, "n1", T0)
    await player(h, "alice", "n1")
    await player(h, "bob", "n2")
    await h.store.create_session("bob", "s1", "", 4, None, T0)
    await h.store.join_session("alice", "s1", None, T0)
    await player(h, "carol", "n1")  # in no session
    now = T0 + NODE_MS + 1
    await beat(h, "n2", now)
    assert await held(h) == 1
    # n1 was only slow: it beats again, learns it was taken for dead, reconciles.
    assert (await beat(h, "n1", now + 1))[1] is True
    verdicts = await h.store.reconcile(
        [live("alice", "n1", "s1"), live("carol", "n1", None)], now + 2)
    assert [v.kind for v in verdicts] == ["OK", "OK"]
    assert await held(h) == 0
    # Their records are theirs again: no hold runs out, no expiry (both nodes
    # beat for long enough now).
    await beat(h, "n1", now + 3, node_ms=10 * HOLD)
    await beat(h, "n2", now + 3, node_ms=10 * HOLD)
    await beat(h, "n2", now + HOLD + 10, node_ms=10 * HOLD)
    rec = await h.store.get_session("s1")
    assert rec is not None and ids(rec) == ["bob", "alice"]
    assert await h.store.resume("carol", tokh("carol"), "n1.c2", now + HOLD + 20) is not None
    # A node that later dies for real still has them on its books.
    await beat(h, "n2", now + HOLD + 10 * HOLD + 5, node_ms=10 * HOLD)
    assert await held(h) == 1


async def test_reconcile_recreates_an_expired_player_record(store: Harness) -> None:  # noqa: F811
    h = store
    await beat(h, "n1", T0)
    await player(h, "dora", "n1")
    now = T0 + NODE_MS + 1
    await beat(h, "n2", now, hold_ms=50)
    # Past the hold her record is gone; her socket on n1 is still open.
    await h.until_player_expired("dora")
    verdicts = await h.store.reconcile([live("dora", "n1", None)], now + 52)
    assert verdicts == [Verdict("OK", None)]
    assert await h.store.resume("dora", tokh("dora"), "n1.y", now + 53) is not None


async def test_reconcile_refuses_to_judge_a_store_of_another_epoch(
    store: Harness  # noqa: F811
) -> None:
    h = store
    await player(h, "erin", "n1")
    await h.store.create_session("erin", "s1", "", 4, None, T0)
    # An emptied Redis (no epoch, or a new one) has not been rebuilt yet: its
    # silence about a session proves nothing.
    assert await h.store.reconcile([live("erin", "n1", "s9")], T0, "not-this-one") is None
    if h.epoch is not None:
        assert await h.store.reconcile([live("erin", "n1", "s1")], T0, h.epoch) == [
            Verdict("OK", await h.store.get_session("s1"))]


async def test_a_restarted_node_with_the_same_id_drops_its_predecessors_sockets(
    store: Harness  # noqa: F811
) -> None:
    """A fixed --node-id restarted within the node timeout: the heartbeat never
    lapsed, but the sockets on the books under that id died with the old process."""
    h = store
    await beat(h, "n1", T0)
    await player(h, "host", "n2")
    await player(h, "ghost", "n1")
    await h.store.create_session("host", "s1", "", 4, None, T0)
    await h.store.join_session("ghost", "s1", None, T0)
    await h.drain(1)
    # The new process's first sweep, well within the old one's heartbeat.
    result = await h.store.sweep(T0 + 10, LIVE, node="n1", fresh=True)
    assert await held(h) == 1
    rec = await h.store.get_session("s1")
    assert rec is not None and result.changes == [Change("s1", rec, None)]
    assert [ev["e"] for _, ev in await h.drain(1)] == ["player_disconnected"]
    # Its own new sockets are its own: later sweeps leave them alone.
    await player(h, "newcomer", "n1", T0 + 20)
    await h.store.sweep(T0 + 30, LIVE, node="n1")
    res = await h.store.resume("newcomer", tokh("newcomer"), "n1.newcomer", T0 + 40)
    assert res is not None
    assert await held(h) == 1


@pytest.fixture(params=["redis", "cluster", "sentinel"])
async def redis_store(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    harness = await open_harness(request.param, request)
    try:
        yield harness
    finally:
        await harness.close()


async def test_a_node_keeps_in_its_player_set_only_the_players_on_its_sockets(
    redis_store: Harness,
) -> None:
    """The set a dead node's players are found by (Redis stores only; the memory
    store has no dead nodes): a closed socket leaves it, in the disconnect's own
    call on one Redis, and a socket that is no longer the player's does not."""
    h = redis_store
    rs = h.store
    assert isinstance(rs, RedisStore)
    members = lambda: rs.redis.smembers(rs._node_set("n1"))  # noqa: E731
    for pid in ("alice", "bob", "carol"):
        await player(h, pid, "n1")
    await rs.create_session("carol", "s1", "", 4, None, T0)
    assert await members() == {b"alice", b"bob", b"carol"}
    # bob took himself over on another socket of n1: the old one's close is stale.
    assert await rs.resume("bob", tokh("bob"), "n1.bob2", T0 + 1) is not None
    assert await rs.disconnect("bob", "n1.bob", T0 + 2, HOLD) is None
    await rs.disconnect("alice", "n1.alice", T0 + 2, HOLD)  # in no session
    assert await rs.disconnect("carol", "n1.carol", T0 + 2, HOLD) is not None  # holds
    assert await members() == {b"bob"}
