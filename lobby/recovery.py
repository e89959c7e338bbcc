"""Getting the store and DynamoDB to agree again after a fault.

`Rebuilder`: an emptied Redis is rebuilt from DynamoDB by one node at a time
(the holder of a lease key with a TTL, renewed while it works) in bounded
batches, so that no single Redis call blocks the other nodes, which go on
serving meanwhile. The epoch is set only by the last step: until then every
node sees "no epoch" and waits for it before re-registering its sockets, as
before. A holder that dies mid-way stops renewing; its lease runs out and the
next node takes over, keeping what was already restored (a batch only writes
sessions that do not exist).

`Reconciler`: after a DynamoDB outage, what is live in the store is compared
with the table, and the differences are written (the live record when the
table is behind, an ENDED item for a session the table still has live but the
store no longer holds). The write-behind queue already keeps every change of
its own node until it lands; this repairs what no queue holds any more (a node
that stopped or crashed during the outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from lobby.persistence.dynamodb import PersistenceQueue, SessionTable
from lobby.session import SessionRecord
from lobby.store.base import SessionStore
from lobby.store.redis import restore_batches

log = logging.getLogger("lobby.recovery")

LoadRecords = Callable[[], Awaitable[list[SessionRecord]]]


@dataclass(slots=True)
class RebuildStats:
    rebuilds: int = 0  # rebuilds this node finished as the lease holder
    restored: int = 0  # sessions those rebuilds restored
    batches: int = 0
    takeovers_lost: int = 0  # rebuilds abandoned because the lease went elsewhere
    last_seconds: float = 0.0


class Rebuilder:
    def __init__(
        self, store: SessionStore, load: LoadRecords, owner: str, *,
        hold_ms: Callable[[], int], now_ms: Callable[[], int],
        batch_size: int = 200, lease_ms: int = 10_000,
    ) -> None:
        self.store = store
        self.load = load
        self.owner = owner
        self.hold_ms = hold_ms
        self.now_ms = now_ms
        self.batch_size = batch_size
        self.lease_ms = lease_ms
        self.stats = RebuildStats()
        self.rebuilding = False
        # Set as this node's current rebuild enters each phase (loading the
        # table, restoring batches, done): for tests and operators' tooling.
        self.reached = {phase: asyncio.Event() for phase in ("loading", "restoring", "done")}
        # Rebuild runs this node held a lease for and that have ended (restored,
        # lease lost, or failed): a run covers every bucket whose lease it took.
        self.runs = 0
        # Set and replaced as each run ends rather than cleared: a clear could
        # hide the run from a waiter that had not woken yet.
        self._run_ended = asyncio.Event()

    async def finished(self, after: int) -> None:
        """Returns once `runs` exceeds `after`, the run's stats already counted:
        read `runs` first, then await this (a run ending in between is not missed)."""
        while self.runs <= after:
            await self._run_ended.wait()

    async def run(self, new_epoch: str) -> str | None:
        """The store's epoch once it has one: rebuilt here if this node gets the
        lease, else None while another node holds it (ask again later)."""
        lease = await self.store.take_restore_lease(self.owner, self.lease_ms)
        if lease.epoch is not None:
            return lease.epoch
        if not lease.mine:
            return None
        try:
            return await self._rebuild(new_epoch)
        finally:
            self.runs += 1
            ended, self._run_ended = self._run_ended, asyncio.Event()
            ended.set()

    async def _rebuild(self, new_epoch: str) -> str | None:
        """run() once this node holds the lease of some emptied buckets."""
        self.rebuilding = True
        for event in self.reached.values():
            event.clear()
        self.reached["loading"].set()
        lost = asyncio.Event()
        renewer = asyncio.create_task(self._renew(lost), name="lobby-rebuild-lease")
        t0 = time.perf_counter()
        try:
            records = await self.load()
            if lost.is_set():
                return await self._lost()
            batches = await asyncio.to_thread(restore_batches, records, self.batch_size)
            self.reached["restoring"].set()
            restored = 0
            for batch in batches:
                n = await self.store.restore_batch(
                    self.owner, batch, self.hold_ms(), self.lease_ms, self.now_ms())
                if n is None:
                    return await self._lost()
                restored += n
                self.stats.batches += 1
            epoch = await self.store.finish_restore(self.owner, new_epoch)
            if epoch is None:
                return await self._lost()
        except BaseException:
            # Another node may take over at once rather than after the TTL.
            with contextlib.suppress(Exception):
                await self.store.drop_restore_lease(self.owner)
            raise
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            self.rebuilding = False
        self.reached["done"].set()
        self.stats.last_seconds = time.perf_counter() - t0
        # Several buckets: the store's epoch lists each bucket's; ours is among them
        # ('': other nodes still rebuild the other buckets, ours are done).
        if not epoch or new_epoch in epoch.split("/"):
            self.stats.rebuilds += 1
            self.stats.restored += restored
            if self.stats.rebuilds > 1 or restored:
                log.warning(
                    "the store came back empty: restored %d live sessions in %d batches"
                    " (%.2fs)", restored, len(batches), self.stats.last_seconds)
        return epoch or None

    async def _renew(self, lost: asyncio.Event) -> None:
        # Loading a large table can take longer than the lease: keep it alive.
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                lease = await self.store.take_restore_lease(self.owner, self.lease_ms)
            except Exception:
                log.warning("renewing the rebuild lease failed; retrying", exc_info=True)
                continue
            if not lease.mine:
                lost.set()
                return

    async def _lost(self) -> None:
        self.stats.takeovers_lost += 1
        log.warning("rebuild lease lost (another node took over or Redis was emptied again)")
        return None


@dataclass(slots=True)
class ReconcileStats:
    runs: int = 0
    skipped: int = 0  # the store had no epoch (being rebuilt): nothing to compare with
    rewritten: int = 0  # live sessions the table was behind on
    ended: int = 0  # sessions the table had live that the store no longer holds
    last_seconds: float = 0.0


class Reconciler:
    def __init__(
        self, store: SessionStore, table: SessionTable, queue: PersistenceQueue,
        page: int = 500,
    ) -> None:
        self.store = store
        self.table = table
        self.queue = queue
        self.page = page
        self.stats = ReconcileStats()
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._last_end = 0.0
        self.min_outage_s = 0.25
        self.cooldown_s = 30.0

    def trigger(self, failed_for: float) -> None:
        """After writes failed for `failed_for` seconds (the queue's recovery
        callback). A blip (one throttled call) loses nothing a queue does not
        hold, and each pass reads the whole table, so short failure runs are
        ignored and passes are at least `cooldown_s` apart; one pass runs at a
        time, and one more if asked again meanwhile."""
        if failed_for < self.min_outage_s:
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="lobby-reconcile")

    async def _loop(self) -> None:
        while True:
            self._again = False
            wait = self._last_end + self.cooldown_s - time.monotonic()
            if self._last_end and wait > 0:
                await asyncio.sleep(wait)
            try:
                await self.run()
            except Exception:
                log.exception("reconciling DynamoDB with the store failed")
            self._last_end = time.monotonic()
            if not self._again:
                return

    async def wait(self, runs: int, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Until `runs` reconciles have finished (tests, operators' tooling)."""
        async with asyncio.timeout(timeout):
            while self.stats.runs + self.stats.skipped < runs:
                self._done.clear()
                await self._done.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def run(self) -> bool:
        """One pass; False when skipped because the store is being rebuilt."""
        t0 = time.perf_counter()
        try:
            return await self._run()
        finally:
            self.stats.last_seconds = time.perf_counter() - t0
            self._done.set()

    async def _run(self) -> bool:
        # Our own backlog first: what it still holds would only show up as a
        # difference that is already on its way.
        await self.queue.flush(30)
        epoch = await self.store.current_epoch()
        if epoch is None:
            self.stats.skipped += 1
            return False
        live: dict[str, SessionRecord] = {}
        cursor: str | None = None
        while True:
            records, cursor = await self.store.scan_sessions(cursor, self.page)
            for rec in records:
                live[rec["id"]] = rec
            if cursor is None:
                break
        items = await asyncio.to_thread(self.table.scan_keys)
        rewritten = 0
        for sid, rec in live.items():
            stored = items.get(sid)
            if stored is None or stored.key < (int(rec["created"]), 0, int(rec["v"])):
                self.queue.submit(rec)
                rewritten += 1
        now_s = time.time()
        candidates = [sid for sid, it in items.items()
                      if not it.ended and it.expires_at > now_s and sid not in live]
        # Created after our pass over the store, or really gone? Ask again: ids
        # are never reused, so one that is missing now has ended.
        gone = [sid for sid in candidates if await self.store.get_session(sid) is None]
        if await self.store.current_epoch() != epoch:
            self.stats.skipped += 1  # emptied meanwhile: the rebuild decides
            return False
        ended = 0
        for sid in gone:
            item = await asyncio.to_thread(self.table.get, sid)
            if item is None or item["session_state"] == "ENDED":
                continue
            self.queue.submit(json.loads(item["record"]), ended_reason="reconciled")
            ended += 1
        self.stats.runs += 1
        self.stats.rewritten += rewritten
        self.stats.ended += ended
        if rewritten or ended:
            log.warning("reconciled DynamoDB with the store: %d live sessions rewritten,"
                        " %d ended ones closed", rewritten, ended)
        return True
