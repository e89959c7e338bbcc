"""The rules of the session lifecycle: one method per request type.

Knows nothing of sockets (it talks to `hub.Client`) nor of Redis keys (it talks
to a `SessionStore`). Each handler validates what the store cannot, makes one
atomic store call, and returns the reply's fields; the store publishes events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from lobby import protocol as p
from lobby.allocators.base import Allocator, NoServerAvailable, lifecycle
from lobby.config import Settings
from lobby.errors import ErrorCode, LobbyError
from lobby.hub import Client, Hub
from lobby.logs import fields
from lobby.passwords import hash_password, verify_password
from lobby.session import SessionRecord, public_session
from lobby.store.base import (
    Change,
    GuessLimits,
    LiveClient,
    PasswordRequired,
    ResumeResult,
    SessionStore,
    SweepResult,
    Timeouts,
)
from lobby.store.search import LISTED
from lobby.tickets import make_ticket

if TYPE_CHECKING:
    from lobby.auth import JwtVerifier

log = logging.getLogger("lobby")

# What a handler returns: the reply's fields, and (session id, version) or
# (session id, version, last chat seq) when the client becomes a member whose
# queued events are released after the reply.
Result = tuple[dict[str, Any], tuple[str, int] | tuple[str, int, int] | None]
OnChange = Callable[[Change], None]
Recover = Callable[[], Awaitable[int]]

PASSWORD_FAILURES_ALLOWED = 5  # per connection per minute: scrypt is costly
_BUSY = "the server is busy checking passwords, try again in a moment"


def _ignore(*args: Any) -> None:
    return None


def _listed(rec: SessionRecord, viewer: str | None) -> dict[str, Any]:
    """A session as the browser shows it: who is in a password room is for its
    members to know (the host too: with --auth jwt its id is the backend's `sub`);
    everyone else sees the counts."""
    view = public_session(rec)
    if rec["pw"] is not None and all(m["id"] != viewer for m in rec["members"]):
        view["host_id"] = None
        view["players"] = []
        view["connected_players"] = []
    return view


def _member(rec: SessionRecord, player_id: str | None) -> bool:
    return any(m["id"] == player_id for m in rec["members"])


def _browser_view(rec: SessionRecord) -> str:
    return p.encode(_listed(rec, None))


class StoreChanged(Exception):
    """The store is not the generation this node synced with (emptied, rebuilding)."""


def now_ms() -> int:
    return int(time.time() * 1000)


def token_hash(token: str) -> str:
    # Only the hash is stored, so a leaked store does not leak resume tokens.
    return hashlib.sha256(token.encode()).hexdigest()


class Lobby:
    def __init__(
        self, settings: Settings, store: SessionStore, hub: Hub, allocator: Allocator,
        on_change: OnChange | None = None, recover: Recover | None = None,
        node_id: str = "",
    ) -> None:
        self.settings = settings
        self.node_id = node_id  # whose heartbeat each sweep is ("": none)
        self._swept = False  # the first sweep tells the store this process is new
        # Disconnects the store could not take (link down): (player, conn, when),
        # retried until they land, with the time the socket really dropped.
        self.failed_disconnects: list[tuple[str, str, int]] = []
        self.store = store
        self.hub = hub
        self.allocator = allocator
        self.servers = lifecycle(allocator)
        self._releases: set[asyncio.Task[bool]] = set()
        # Every change goes here (DynamoDB persistence when configured).
        persist = on_change or (lambda change: None)

        def _on_change(change: Change) -> None:
            if change.ended:
                log.info("session %s closed (%s)", change.session_id, change.ended,
                         extra=fields(session=change.session_id, reason=change.ended))
                # A session that failed (abandoned, server_timeout, idle, expired)
                # gives its game server back; `complete` does it before answering.
                server_id = change.record.get("server_id")
                if server_id and change.ended != "completed":
                    self._release_later(server_id, change.session_id, change.ended)
            persist(change)

        self._on_change = _on_change
        # Observers of requests (type, result code, seconds) and game-server
        # claims (outcome, seconds): the node's metrics (lobby/metrics.py).
        self.observe_request: Callable[[str, str, float], None] = _ignore
        self.observe_claim: Callable[[str, float], None] = _ignore
        # Asked when a resume token is unknown: rebuilds the store if it was emptied
        # and returns its generation, which changes with every rebuild.
        self._recover = recover
        # --auth jwt: who a player is comes from the game's backend (lobby/auth.py).
        self.auth: JwtVerifier | None = None
        if settings.auth == "jwt":
            # Imported only here: PyJWT and cryptography cost a node ~9 MiB of RSS.
            from lobby.auth import JwtVerifier

            self.auth = JwtVerifier(settings)
        self.store_generation = 0
        self.hold_ms = int(settings.seat_hold_seconds * 1000)
        self.timeouts = Timeouts(
            idle_ms=int(settings.waiting_idle_seconds * 1000),
            connecting_ms=int(settings.connecting_timeout_seconds * 1000),
            in_progress_ms=int(settings.in_progress_max_seconds * 1000),
            node_ms=int(settings.node_timeout_seconds * 1000),
            hold_ms=self.hold_ms,
        )
        # scrypt gets its own small pool so password guessing cannot starve the rest.
        self._pw_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lobby-scrypt")
        self._held: dict[str, tuple[str, int]] = {}  # conn id -> (session, version)
        # ...and a bounded queue: past it a password request is refused at once
        # rather than waiting behind an attacker's guesses. One address holds at
        # most a quarter of it, so that guesses from a few addresses cannot keep
        # everybody else's right password out.
        self._pw_by_address: Counter[str] = Counter()  # jobs queued or running, per address
        self.password_checks = 0  # scrypt verifications run (wrong and right)
        self.guess_limits = GuessLimits(
            per_session=settings.password_guesses_per_session,
            per_address=settings.password_guesses_per_address,
            lock_ms=int(settings.password_lockout_seconds * 1000),
            lock_max_ms=max(int(settings.password_lockout_seconds * 1000), 900_000),
        )
        self._handlers: dict[str, Callable[[Client, Any], Awaitable[Result]]] = {
            "hello": self.hello,
            "create_session": self.create_session,
            "list_sessions": self.list_sessions,
            "join_session": self.join_session,
            "leave_session": self.leave_session,
            "start_session": self.start_session,
            "kick_player": self.kick_player,
            "ping": self.ping,
            "join_ticket": self.join_ticket,
            "update_session": self.update_session,
            "update_player": self.update_player,
            "promote_player": self.promote_player,
            "set_ready": self.set_ready,
            "send_chat": self.send_chat,
            "chat_history": self.chat_history,
        }

    def changed(self, record: SessionRecord) -> None:
        self._on_change(Change(record["id"], record))

    # dispatch ----------------------------------------------------------------
    async def handle(self, client: Client, req: Any) -> None:
        started = time.perf_counter()
        try:
            if client.player_id is None and req.type != "hello":
                raise LobbyError(ErrorCode.NOT_AUTHENTICATED, "send hello first")
            result, membership = await self._handlers[req.type](client, req)
        except LobbyError as err:
            client.push(p.encode(p.reply_for_error(req.type, req.id, err)))
            self._unhold(client)
            self._observed(client, req.type, err.code.value, started)
            return
        except Exception:
            log.exception("request %s failed", req.type,
                          extra=fields(conn=client.conn_id, player=client.player_id,
                                       request=req.type, code="INTERNAL"))
            client.push(p.encode(p.error_reply(
                req.type, req.id, ErrorCode.INTERNAL, "internal error")))
            self._unhold(client)
            self._observed(client, req.type, "INTERNAL", started)
            return
        client.push(p.encode(p.ok_reply(req.type, req.id, result)))
        self._unhold(client)
        self._observed(client, req.type, "OK", started)
        if membership is not None:
            self.hub.activate(membership[0], client, *membership[1:])

    def _hold(self, client: Client, session_id: str) -> None:
        """The host gets its start reply before session_started (or
        session_start_failed) in both store modes: from the claim's end until the
        reply is out, the events reaching its socket are queued."""
        version = self.hub.hold(session_id, client)
        if version is not None:
            self._held[client.conn_id] = (session_id, version)

    def _unhold(self, client: Client) -> None:
        held = self._held.pop(client.conn_id, None)
        if held is not None:
            self.hub.activate(held[0], client, held[1])

    def _observed(self, client: Client, rtype: str, code: str, started: float) -> None:
        seconds = time.perf_counter() - started
        self.observe_request(rtype, code, seconds)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request %s: %s in %.1f ms", rtype, code, seconds * 1000,
                      extra=fields(conn=client.conn_id, player=client.player_id,
                                   session=client.session_id, request=rtype, code=code,
                                   latency_ms=round(seconds * 1000, 3)))

    async def disconnected(self, client: Client) -> None:
        self.hub.remove_client(client)
        if client.player_id is None:
            return
        await self.hub.detach(client.session_id, client)
        when = now_ms()
        try:
            rec = await self.store.disconnect(
                client.player_id, client.conn_id, when, self.hold_ms)
        except Exception as exc:
            # Lost, the seat would stay taken by nobody for good: keep it for retry.
            log.warning("disconnect of %s not stored (%s); retrying", client.conn_id, exc)
            self.failed_disconnects.append((client.player_id, client.conn_id, when))
            return
        if rec is not None:
            self.changed(rec)

    async def retry_disconnects(self) -> None:
        """Store the disconnects that failed; raises (keeping the rest) while it cannot."""
        while self.failed_disconnects:
            pid, conn, when = self.failed_disconnects[0]
            # A no-op if the player has resumed on another socket meanwhile.
            rec = await self.store.disconnect(pid, conn, when, self.hold_ms)
            self.failed_disconnects.pop(0)
            if rec is not None:
                self.changed(rec)

    async def sweep(self) -> SweepResult:
        result = await self.store.sweep(now_ms(), self.timeouts, node=self.node_id or None,
                                        fresh=not self._swept)
        self._swept = True
        for change in result.changes:
            self._on_change(change)
        return result

    # game servers --------------------------------------------------------------
    def _release_later(self, server_id: str, session_id: str, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self.servers.release(server_id, session_id, reason))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def session_holder(self, session_id: str) -> tuple[str, str | None] | None:
        """(state, server_id) of a live session, for the allocator's reconciliation."""
        rec = await self.store.get_session(session_id)
        return None if rec is None else (rec["state"], rec["server_id"])

    async def reconcile_servers(self) -> int:
        return await self.servers.reconcile(self.session_holder)
    async def reconcile(self, epoch: str | None = None, batch: int = 500) -> int:
        """After this node could not hear the store (Redis link cut, or taken for
        dead), check every local socket against it. The store wins: a socket that
        was replaced is closed with 4001; one removed from its session (kicked, or
        the session ended) is told, with `kicked` or `session_closed`; one the
        store had dropped is the player's again. Returns how many were told.
        Raises StoreChanged if the store is not at `epoch` (sync with it first)."""
        told = 0
        clients = [c for c in self.hub.clients() if c.player_id is not None]
        for i in range(0, len(clients), batch):
            chunk = clients[i:i + batch]
            live = [LiveClient(c.player_id, c.name, c.token_hash, c.conn_id, c.session_id)
                    for c in chunk if c.player_id is not None]
            verdicts = await self.store.reconcile(live, now_ms(), epoch)
            if verdicts is None:
                raise StoreChanged("the store changed generation: sync first")
            for c, seen, verdict in zip(chunk, live, verdicts, strict=True):
                if c.player_id != seen.player_id or c.session_id != seen.session_id:
                    continue  # it moved on while we asked: its own requests decide
                if verdict.kind == "REPLACED":
                    self.hub.replace(c)
                    told += 1
                elif verdict.kind == "OUT" and seen.session_id is not None:
                    self.hub.drop(seen.session_id, c)
                    if verdict.session is not None:
                        c.push(p.encode({"type": "kicked", "session_id": seen.session_id,
                                         "session": public_session(verdict.session)}))
                    else:
                        c.push(p.encode({"type": "session_closed",
                                         "session_id": seen.session_id, "reason": "lost"}))
                    told += 1
        if told:
            log.warning("reconciled with the store: %d local sockets told", told)
        return told

    # game-server callbacks ---------------------------------------------------
    async def mark_in_progress(self, session_id: str) -> SessionRecord:
        rec = await self.store.mark_in_progress(session_id, now_ms())
        self.changed(rec)
        return rec

    async def complete(self, session_id: str, reason: str = "completed") -> SessionRecord:
        change = await self.store.complete(session_id, reason, now_ms())
        self._on_change(change)
        server_id = change.record.get("server_id")
        if server_id:
            # Deregistered before the answer, so the server's next registration
            # (for its next match) cannot be undone by this one. Bounded: a
            # release that does not get through is found by reconciliation.
            try:
                await asyncio.wait_for(
                    self.servers.release(server_id, session_id, "match complete"), 15)
            except TimeoutError:
                log.warning("deregistering game server %s after session %s timed out",
                            server_id, session_id)
        return change.record

    # requests ----------------------------------------------------------------
    async def hello(self, client: Client, req: p.Hello) -> Result:
        if client.player_id is not None:
            raise LobbyError(ErrorCode.BAD_REQUEST, "hello was already sent on this connection")
        if req.resume_token:
            generation = self.store_generation
            resumed = await self._resume(client, req.resume_token)
            # Unknown token: maybe Redis lost it and was (or is now being) rebuilt.
            rebuilt = resumed is None and self._recover is not None and (
                await self._recover() != generation)
            if rebuilt:
                resumed = await self._resume(client, req.resume_token)
            if resumed is not None:
                return resumed
        if self.auth is not None:
            return await self._hello_verified(client, req)
        # URL-safe base64 has no '.', which resume tokens and join tickets use
        # as their separator.
        player_id = "p_" + secrets.token_urlsafe(8)
        resume_token = f"{player_id}.{secrets.token_urlsafe(24)}"
        name = req.name or f"Player-{player_id[2:6]}"
        hashed = token_hash(resume_token)
        await self.store.new_player(player_id, name, hashed, client.conn_id, now_ms())
        self.hub.bind(client, player_id)  # a new id: no resume elsewhere can race it
        client.name = name
        client.token_hash = hashed
        return {"player_id": player_id, "name": name, "resume_token": resume_token,
                "resumed": False, "session": None, "chat": []}, None

    async def _hello_verified(self, client: Client, req: p.Hello) -> Result:
        """--auth jwt: the player is the token's sub; a second socket with the same
        sub takes the player over (the first gets 4001), session and all."""
        assert self.auth is not None
        if not req.token:
            raise LobbyError(ErrorCode.NOT_AUTHENTICATED,
                             "this lobby needs a token from the game's backend: "
                             "hello {token} (or a resume_token)")
        from lobby.auth import player_id_for

        claims = await self.auth.verify(req.token)
        player_id = player_id_for(claims["sub"])
        name = req.name
        claimed = claims.get(self.auth.name_claim)
        if isinstance(claimed, str):
            with contextlib.suppress(ValueError):
                name = p.check_name(claimed)
        name = name or f"Player-{player_id[:4]}"
        resume_token = f"{player_id}.{secrets.token_urlsafe(24)}"
        res, new = await self.store.claim(
            player_id, name, token_hash(resume_token), client.conn_id, now_ms())
        return await self._resumed(client, player_id, res, resume_token, resumed=not new)

    async def _resume(self, client: Client, resume_token: str) -> Result | None:
        player_id = resume_token.split(".", 1)[0]
        res = await self.store.resume(
            player_id, token_hash(resume_token), client.conn_id, now_ms()
        )
        if res is None:
            return None
        return await self._resumed(client, player_id, res, resume_token)

    async def _resumed(self, client: Client, player_id: str, res: ResumeResult,
                       resume_token: str, resumed: bool = True) -> Result:
        """The reply of a socket that has (re)taken an existing or claimed player."""
        if res.reconnected and res.session is not None:
            self.changed(res.session)
        bound = self.hub.bind(client, player_id)
        client.name = res.player.name
        client.token_hash = token_hash(resume_token)
        # resumed: the player existed (by its resume token, or its sub had a player).
        reply: dict[str, Any] = {
            "player_id": player_id, "name": res.player.name, "resume_token": resume_token,
            "resumed": resumed, "session": None, "chat": []}
        if not bound:  # a racing resume elsewhere won: this socket is closing with 4001
            return reply, None
        sid = res.player.session_id
        if sid is None:
            return reply, None
        # Subscribe first, then read the session: the snapshot then covers every
        # event this node could have missed before it was listening.
        await self.hub.attach(sid, client)
        rec = await self.store.get_session(sid)
        if rec is None or all(m["id"] != player_id for m in rec["members"]):
            await self.hub.detach(sid, client)
            return reply, None
        reply["session"] = public_session(rec, member=True)
        # Read after subscribing, as the record: what it lacks comes as events.
        reply["chat"] = await self._chat_log(sid, player_id)
        return reply, (sid, rec["v"], _last_seq(reply["chat"]))

    async def create_session(self, client: Client, req: p.CreateSession) -> Result:
        assert client.player_id is not None
        cap = self.settings.max_players_cap
        max_players = req.max_players or min(self.settings.default_max_players, cap)
        if max_players > cap:
            raise LobbyError(ErrorCode.BAD_REQUEST, f"max_players must be between 2 and {cap}")
        min_players = req.min_players or 1
        if min_players > max_players:
            raise LobbyError(ErrorCode.BAD_REQUEST,
                             f"min_players must be between 1 and max_players ({max_players})")
        self._not_in_session(client)
        pw = None
        if req.password:
            pw = await self._scrypt(client.address, hash_password, req.password)
        session_id = secrets.token_urlsafe(8)  # no '.': join tickets separate fields with it
        async with self._becoming_member(session_id, client):
            rec = await self.store.create_session(
                client.player_id, session_id, req.name or "", max_players, pw, now_ms(),
                attributes=req.attributes or {}, visibility=req.visibility or "public",
                indexed=self.settings.indexed_attributes,
                start_rule=req.start_rule or "host", min_players=min_players,
            )
        log.info("session %s created by %s", session_id, client.player_id,
                 extra=fields(session=session_id, player=client.player_id, conn=client.conn_id))
        result, membership = self._member_result(rec)
        result["chat"] = []  # a new session has said nothing yet
        return result, membership

    async def list_sessions(self, client: Client, req: p.ListSessions) -> Result:
        query = {
            "sort": req.sort or "newest", "conds": list(req.filter or ()),
            "min_free": req.min_free_seats, "has_pw": req.has_password,
            "indexed": self.settings.indexed_attributes,
        }
        # The store checks the cursor (BAD_REQUEST when it is not one of its own).
        records, nxt = await self.store.list_sessions(req.limit or 20, req.cursor or None,
                                                      query=query)
        viewer = client.player_id
        # Each record's view to non-members is encoded once (search.RecordCache);
        # only a member of a password room gets a view of its own.
        views = p.EncodedList(
            p.encode(_listed(r, viewer)) if r["pw"] is not None and _member(r, viewer)
            else LISTED.view(r, _browser_view) for r in records)
        return {"sessions": views, "next_cursor": nxt}, None

    async def join_session(self, client: Client, req: p.JoinSession) -> Result:
        assert client.player_id is not None
        self._not_in_session(client)
        if (req.session_id is None) == (req.join_code is None):
            raise LobbyError(ErrorCode.BAD_REQUEST, "give either session_id or join_code")
        if req.join_code is not None:
            return await self._join_by_code(client, req)
        sid = req.session_id
        assert sid is not None
        async with self._becoming_member(sid, client):
            # The chat comes in the same atomic step as the join: newer messages
            # reach the (already subscribed) joiner as chat_message events.
            try:
                rec, chat = await self.store.join_session_chat(
                    client.player_id, sid, None, now_ms())
            except PasswordRequired as need:
                await self._check_password(client, sid, req.password, need)
                rec, chat = await self.store.join_session_chat(
                    client.player_id, sid, need.pw, now_ms())
        result, _ = self._member_result(rec)
        result["chat"] = chat
        return result, (rec["id"], rec["v"], _last_seq(chat))

    async def _chat_log(self, session_id: str, player_id: str) -> list[dict[str, Any]]:
        try:
            return await self.store.chat_history(session_id, player_id)
        except LobbyError:
            return []  # no longer a member (kicked meanwhile): its events say so

    async def _join_by_code(self, client: Client, req: p.JoinSession) -> Result:
        assert client.player_id is not None and req.join_code is not None
        # Codes can be guessed: unknown ones count as wrong passwords do, on the
        # socket and (in the store, across nodes) against the client's address.
        self._guess_allowed(client)
        limits = self.guess_limits
        verdict = await self.store.password_guess("", client.address, now_ms(), limits)
        if verdict.retry_ms:
            raise LobbyError(ErrorCode.RATE_LIMITED,
                             "too many wrong guesses for your address: try again in "
                             f"{-(-verdict.retry_ms // 1000)} s")
        code = p.normalise_join_code(req.join_code)
        sid = await self.store.session_of_code(code) if code is not None else None
        if sid is None:
            self._guess_failed(client)
            raise LobbyError(ErrorCode.SESSION_NOT_FOUND, "no session has this join code")
        await self.store.password_refund("", client.address, now_ms(), limits)
        # The node must be subscribed before the join, so the code is resolved
        # first and the join goes by id (to the session the code named then).
        return await self.join_session(client, p.JoinSession(
            type="join_session", session_id=sid, password=req.password))

    @contextlib.asynccontextmanager
    async def _becoming_member(self, session_id: str, client: Client) -> AsyncIterator[None]:
        """Register the client as a pending member (node subscribed) before the
        store call that makes it one; undo that if the call fails."""
        await self.hub.attach(session_id, client)
        try:
            yield
        except BaseException:
            await self.hub.detach(session_id, client)
            raise

    def _member_result(self, rec: SessionRecord) -> Result:
        self.changed(rec)
        return {"session": public_session(rec, member=True)}, (rec["id"], rec["v"])

    @staticmethod
    def _guess_allowed(client: Client) -> None:
        """Wrong passwords and unknown join codes share one budget per minute."""
        failures = client.password_failures
        now = time.monotonic()
        failures[:] = [t for t in failures if now - t < 60]
        if len(failures) >= PASSWORD_FAILURES_ALLOWED:
            raise LobbyError(ErrorCode.RATE_LIMITED, "too many wrong guesses, wait a minute")

    @staticmethod
    def _guess_failed(client: Client) -> None:
        client.password_failures.append(time.monotonic())

    def _scrypt_full(self, address: str) -> bool:
        queue = self.settings.password_queue
        by_address = self._pw_by_address
        return by_address.total() >= queue or by_address[address] >= max(1, queue // 4)

    async def _scrypt(self, address: str, fn: Callable[..., Any], *args: Any) -> Any:
        if self._scrypt_full(address):
            raise LobbyError(ErrorCode.RATE_LIMITED, _BUSY)
        by_address = self._pw_by_address
        by_address[address] += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pw_pool, fn, *args)
        finally:
            by_address[address] -= 1
            if not by_address[address]:
                del by_address[address]

    async def _check_password(
        self, client: Client, session_id: str, password: str | None, need: PasswordRequired
    ) -> None:
        if not password:
            raise LobbyError(ErrorCode.WRONG_PASSWORD, "this session needs a password")
        self._guess_allowed(client)
        if self._scrypt_full(client.address):
            raise LobbyError(ErrorCode.RATE_LIMITED, _BUSY)  # before counting the guess
        # Counted in the store before scrypt runs: the limits hold across sockets
        # and nodes, and concurrent guesses cannot overrun them.
        limits = self.guess_limits
        verdict = await self.store.password_guess(session_id, client.address, now_ms(), limits)
        if verdict.retry_ms:
            whom = "this session" if verdict.scope == "session" else "your address"
            raise LobbyError(ErrorCode.RATE_LIMITED,
                             f"too many wrong passwords for {whom}: try again in "
                             f"{-(-verdict.retry_ms // 1000)} s")
        try:
            good = await self._scrypt(client.address, verify_password, password, need.pw)
        except LobbyError:
            await self.store.password_refund(session_id, client.address, now_ms(), limits)
            raise
        self.password_checks += 1
        if good:
            await self.store.password_refund(session_id, client.address, now_ms(), limits)
            return
        self._guess_failed(client)
        raise LobbyError(ErrorCode.WRONG_PASSWORD, "wrong password")

    async def leave_session(self, client: Client, req: p.LeaveSession) -> Result:
        assert client.player_id is not None
        sid = client.session_id
        try:
            change = await self.store.leave_session(client.player_id, now_ms(), session_id=sid)
        except LobbyError as e:
            if e.code is ErrorCode.NOT_IN_SESSION:
                # The store wins: it lost the join (a Sentinel or cluster failover
                # drops the writes not yet replicated). Forgetting the room here
                # lets the next join work instead of answering ALREADY_IN_SESSION.
                await self.hub.detach(sid, client)
            raise
        await self.hub.detach(sid, client)
        self._on_change(change)
        return {}, None

    async def kick_player(self, client: Client, req: p.KickPlayer) -> Result:
        assert client.player_id is not None
        rec = await self.store.kick(client.player_id, req.player_id, now_ms(), ban=bool(req.ban),
                                    session_id=client.session_id)
        self.changed(rec)
        return {}, None

    async def update_session(self, client: Client, req: p.UpdateSession) -> Result:
        assert client.player_id is not None
        changes: dict[str, Any] = {}
        if req.name is not None:
            changes["name"] = req.name
        if req.max_players is not None:
            cap = self.settings.max_players_cap
            if req.max_players > cap:
                raise LobbyError(ErrorCode.BAD_REQUEST, f"max_players must be between 2 and {cap}")
            changes["max"] = req.max_players
        if req.password is not None:
            changes["pw"] = None
            if req.password:
                changes["pw"] = await self._scrypt(client.address, hash_password, req.password)
        if req.attributes is not None:
            changes["attrs"] = req.attributes
        if req.visibility is not None:
            changes["vis"] = req.visibility
        if req.locked is not None:
            changes["locked"] = req.locked
        if req.start_rule is not None:
            changes["rule"] = req.start_rule
        if req.min_players is not None:
            changes["minp"] = req.min_players
        rec = await self.store.update_session(
            client.player_id, changes, now_ms(), indexed=self.settings.indexed_attributes,
            attribute_limit=p.MAX_SESSION_ATTRIBUTES, session_id=client.session_id)
        self.changed(rec)
        return {"session": public_session(rec, member=True)}, None

    async def update_player(self, client: Client, req: p.UpdatePlayer) -> Result:
        assert client.player_id is not None
        rec = await self.store.update_player(
            client.player_id, req.attributes, now_ms(), attribute_limit=p.MAX_PLAYER_ATTRIBUTES,
            session_id=client.session_id)
        self.changed(rec)
        return {}, None

    async def promote_player(self, client: Client, req: p.PromotePlayer) -> Result:
        assert client.player_id is not None
        rec = await self.store.promote(client.player_id, req.player_id, now_ms(),
                                       session_id=client.session_id)
        self.changed(rec)
        return {}, None

    async def start_session(self, client: Client, req: p.StartSession) -> Result:
        assert client.player_id is not None
        rec = await self.store.begin_start(client.player_id, now_ms(), session_id=client.session_id)
        sid = rec["id"]
        self.changed(rec)
        claim_started = time.perf_counter()
        try:
            alloc = await self.allocator.allocate(sid, [m["id"] for m in rec["members"]])
        except Exception as exc:
            self._hold(client, sid)
            # Whatever went wrong, the session must not stay in CONNECTING.
            outcome = "no_server" if isinstance(exc, NoServerAvailable) else "error"
            seconds = time.perf_counter() - claim_started
            self.observe_claim(outcome, seconds)
            log.info("claim for session %s: %s after %.1f ms", sid, outcome, seconds * 1000,
                     extra=fields(session=sid, outcome=outcome,
                                  latency_ms=round(seconds * 1000, 3)))
            if not isinstance(exc, NoServerAvailable):
                log.exception("allocator failed for session %s", sid)
            message = "no game server is available, try again"
            back = await self.store.fail_start(
                sid, ErrorCode.NO_SERVER_AVAILABLE, message, now_ms(), self.hold_ms)
            if back is not None:
                self.changed(back)
            raise LobbyError(ErrorCode.NO_SERVER_AVAILABLE, message) from None
        seconds = time.perf_counter() - claim_started
        self.observe_claim("claimed", seconds)
        log.info("claim for session %s: server %s (%s) in %.1f ms", sid, alloc.server_id,
                 alloc.endpoint, seconds * 1000,
                 extra=fields(session=sid, outcome="claimed", server=alloc.server_id,
                              endpoint=alloc.endpoint, latency_ms=round(seconds * 1000, 3)))
        self._hold(client, sid)
        try:
            started = await self.store.finish_start(
                sid, alloc.server_id, alloc.endpoint, now_ms())
        except Exception:
            # The claim stands but the session did not record it: give the room
            # and the server back.
            log.exception("recording the game server of session %s failed", sid)
            self._release_later(alloc.server_id, sid, "start rolled back")
            back = await self.store.fail_start(
                sid, ErrorCode.INTERNAL, "the start failed, try again", now_ms(), self.hold_ms)
            if back is not None:
                self.changed(back)
            raise LobbyError(ErrorCode.INTERNAL, "the start failed, try again") from None
        if started is None:
            # Everyone left while the claim ran: nobody will ever use this server.
            self._release_later(alloc.server_id, sid, "session vanished during the claim")
            raise LobbyError(ErrorCode.SESSION_NOT_FOUND, "the session ended while starting")
        log.info("session %s started on %s", sid, alloc.endpoint,
                 extra=fields(session=sid, player=client.player_id, server=alloc.server_id,
                              endpoint=alloc.endpoint))
        self.changed(started)
        return {"session": public_session(started, member=True)}, None

    async def set_ready(self, client: Client, req: p.SetReady) -> Result:
        assert client.player_id is not None
        rec = await self.store.set_ready(client.player_id, req.ready, now_ms(),
                                         session_id=client.session_id)
        self.changed(rec)
        return {}, None

    async def send_chat(self, client: Client, req: p.SendChat) -> Result:
        assert client.player_id is not None
        sid = client.session_id
        if sid is None:
            raise LobbyError(ErrorCode.NOT_IN_SESSION, "chat is for members of a session")
        await self.store.send_chat(sid, client.player_id, req.text, now_ms())
        return {}, None

    async def chat_history(self, client: Client, req: p.ChatHistory) -> Result:
        assert client.player_id is not None
        sid = client.session_id
        if sid is None:
            raise LobbyError(ErrorCode.NOT_IN_SESSION, "chat is for members of a session")
        messages = await self.store.chat_history(sid, client.player_id)
        after = req.after_seq or 0
        return {"messages": [m for m in messages if m["seq"] > after]}, None

    async def ping(self, client: Client, req: p.Ping) -> Result:
        return {}, None

    async def join_ticket(self, client: Client, req: p.JoinTicket) -> Result:
        assert client.player_id is not None
        key = self.settings.server_key
        # First, so that a client learns at once that this lobby's game servers
        # take no tickets, whatever state its session is in.
        if not key:
            raise LobbyError(ErrorCode.TICKETS_DISABLED,
                             "this lobby has no server key, so it issues no tickets")
        # The store, not the socket's view, decides membership: a ticket must
        # never outlive a kick, a leave or the end of the session.
        sid = client.session_id
        rec = await self.store.get_session(sid) if sid is not None else None
        if rec is None or all(m["id"] != client.player_id for m in rec["members"]):
            raise LobbyError(ErrorCode.NOT_IN_SESSION)
        endpoint = rec["endpoint"]
        if rec["state"] == "WAITING" or endpoint is None:
            raise LobbyError(ErrorCode.SESSION_NOT_STARTED,
                             "the session has no game server yet: wait for session_started")
        expires_at = now_ms() // 1000 + self.settings.ticket_ttl_seconds
        ticket = make_ticket(key, rec["id"], client.player_id, expires_at)
        return {"ticket": ticket, "server_endpoint": endpoint, "expires_at": expires_at}, None

    @staticmethod
    def _not_in_session(client: Client) -> None:
        if client.session_id is not None:
            raise LobbyError(ErrorCode.ALREADY_IN_SESSION, "leave your current session first")

    async def close(self) -> None:
        self._pw_pool.shutdown(wait=False, cancel_futures=True)
        if self._releases:
            await asyncio.wait(list(self._releases), timeout=10)


def _last_seq(chat: list[dict[str, Any]]) -> int:
    return int(chat[-1]["seq"]) if chat else 0
