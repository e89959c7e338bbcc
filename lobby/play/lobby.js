// lobby.js: a browser client of the lobby server (protocol.md). One dependency-free
// ES module; the same shape as the Python client (lobby.client):
//
//   import { connect } from "./lobby.js";
//   const lobby = await connect("ws://localhost:8080/ws", { name: "alice" });
//   lobby.on("player_joined", (ev) => console.log(ev.name, "joined", lobby.session));
//   const session = await lobby.createSession("Friday", 4);
//
// One promise per request (resolved with the reply's content, rejected with a
// LobbyError carrying the protocol's error code), `on(type, callback)` for events,
// `session` mirrored from replies and events, request ids and timeouts, and resume:
// the resume token is kept in localStorage, so a reload (or a dropped socket, retried
// with exponential backoff and jitter) is the same player, in the same session.
// Types: JSDoc below; the wire's full schema is schema/lobby.schema.json.

/**
 * @typedef {{player_id: string, name: string}} Player
 * @typedef {{
 *   session_id: string, name: string, host_id: string | null,
 *   session_state: "WAITING" | "CONNECTING" | "IN_PROGRESS",
 *   player_count: number, max_players: number, connected_players: string[],
 *   players: Player[], has_password: boolean, server_id: string | null,
 *   server_endpoint: string | null, created_at: number, version: number
 * }} Session
 * @typedef {{type: string, session_id?: string, session?: Session, [key: string]: any}} LobbyEvent
 * @typedef {{sessions: Session[], next_cursor: string | null}} SessionPage
 * @typedef {{ticket: string, server_endpoint: string, expires_at: number}} JoinTicket
 * @typedef {{
 *   name?: string, token?: string, resumeToken?: string, timeout?: number, startTimeout?: number,
 *   reconnect?: boolean, maxReconnectAttempts?: number, reconnectBaseDelay?: number,
 *   reconnectMaxDelay?: number, storage?: Storage | null, storageKey?: string
 * }} ConnectOptions
 */

export const CLOSE_REPLACED = 4001;
/** Client-made error codes (never sent by the server). */
export const TIMEOUT = "TIMEOUT";
export const DISCONNECTED = "DISCONNECTED";
export const NOT_CONNECTED = "NOT_CONNECTED";

/** A request that did not succeed: `code` is the server's error code or a client-made one. */
export class LobbyError extends Error {
  /** @param {string} code @param {string} message @param {object} [reply] */
  constructor(code, message, reply) {
    super(`${code}: ${message}`);
    this.name = "LobbyError";
    this.code = code;
    this.reply = reply || null;
  }
}

/**
 * Connect to `url` (ws://HOST:PORT/ws) and say hello. Resolves once the hello is
 * answered (a resumed player when localStorage holds a known resume token).
 * @param {string} url @param {ConnectOptions} [options] @returns {Promise<LobbyClient>}
 */
export async function connect(url, options = {}) {
  const client = new LobbyClient(url, options);
  await client.start();
  return client;
}

/** The default ws:// or wss:// URL of a lobby serving this page (its /ws). */
export function defaultUrl(loc = globalThis.location) {
  return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/ws`;
}

export class LobbyClient {
  /** @param {string} url @param {ConnectOptions} [options] */
  constructor(url, options = {}) {
    this.url = url;
    this.name = options.name ?? null;
    this.token = options.token ?? null;
    this.timeout = (options.timeout ?? 10) * 1000;
    // start_session's reply comes after the game server's claim, which GameLift's claim
    // limit (20 a second per account) can hold back for up to 30 s in a burst of starts.
    this.startTimeout = (options.startTimeout ?? 40) * 1000;
    this.reconnect = options.reconnect ?? true;
    this.maxReconnectAttempts = options.maxReconnectAttempts ?? 12;
    this.reconnectBaseDelay = (options.reconnectBaseDelay ?? 0.5) * 1000;
    this.reconnectMaxDelay = (options.reconnectMaxDelay ?? 15) * 1000;
    this.storage = options.storage === undefined ? globalThis.localStorage ?? null : options.storage;
    this.storageKey = options.storageKey ?? "lobby.resume_token";
    /** @type {string | null} */
    this.resumeToken = options.resumeToken ?? this._load();
    /** @type {string | null} */
    this.playerId = null;
    /** The mirrored session (null when in none), updated before events are delivered. @type {Session | null} */
    this.session = null;
    /** "connecting" | "online" | "reconnecting" | "closed" */
    this.state = "connecting";
    this.resumed = false;
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map();
    this._late = new Map();
    this._listeners = new Map();
    this._closing = false;
    this._waitingOnline = [];
  }

  // connection -------------------------------------------------------------------
  async start() {
    await this._open();
    await this._hello();
  }

  _open() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      let opened = false;
      const timer = setTimeout(() => { ws.close(); reject(new LobbyError(TIMEOUT, "connect timed out")); }, this.timeout);
      ws.onopen = () => { opened = true; clearTimeout(timer); this._ws = ws; resolve(); };
      ws.onmessage = (msg) => this._onFrame(msg.data);
      ws.onclose = (ev) => {
        clearTimeout(timer);
        if (!opened) { reject(new LobbyError(NOT_CONNECTED, `cannot connect to ${this.url}`)); return; }
        if (ws === this._ws) this._lost(ev.code);
      };
    });
  }

  async _hello() {
    const fields = {};
    if (this.name) fields.name = this.name;
    if (this.token) fields.token = this.token;
    if (this.resumeToken) fields.resume_token = this.resumeToken;
    const reply = await this._send("hello", fields);
    const had = this.session;
    this.playerId = reply.player_id;
    this.name = reply.name;
    this.resumeToken = reply.resume_token;
    this.resumed = reply.resumed;
    this._store(reply.resume_token);
    this.session = reply.session || null;
    this.state = "online";
    for (const wake of this._waitingOnline.splice(0)) wake();
    if (had && !this.session) this._emit("session_lost", had);
    this._emit("session", this.session);
    return reply;
  }

  /** Close for good (no reconnect); pending requests fail with DISCONNECTED. */
  close() {
    this._closing = true;
    this.state = "closed";
    if (this._ws) this._ws.close(1000, "client close");
    this._failPending(DISCONNECTED, "the client closed the connection");
  }

  /** Forget the stored resume token: the next connect is a new player. */
  forgetIdentity() {
    this.resumeToken = null;
    if (this.storage) this.storage.removeItem(this.storageKey);
  }

  _lost(code) {
    this._failPending(DISCONNECTED, "the lobby connection dropped");
    if (this._closing || this.state === "reconnecting") return;
    if (code === CLOSE_REPLACED || !this.reconnect || !this.playerId) {
      this.state = "closed";
      this._emit("disconnected", code);
      return;
    }
    this.state = "reconnecting";
    this._reconnect();
  }

  async _reconnect() {
    for (let attempt = 1; attempt <= this.maxReconnectAttempts; attempt++) {
      const ceiling = Math.min(this.reconnectMaxDelay, this.reconnectBaseDelay * 2 ** (attempt - 1));
      const delay = ceiling * (0.5 + Math.random() / 2); // jitter
      this._emit("reconnecting", attempt);
      await new Promise((r) => setTimeout(r, delay));
      if (this._closing) return;
      try {
        await this._open();
        const reply = await this._hello();
        this._emit("reconnected", reply.resumed);
        return;
      } catch (err) {
        if (this._ws) this._ws.close();
      }
    }
    this.state = "closed";
    this._emit("disconnected", null);
  }

  _load() {
    try { return this.storage ? this.storage.getItem(this.storageKey) : null; } catch { return null; }
  }

  _store(token) {
    try { if (this.storage) this.storage.setItem(this.storageKey, token); } catch { /* private mode */ }
  }

  // requests ---------------------------------------------------------------------
  /**
   * Any request (also ones without a method here): resolves with the ok reply.
   * While reconnecting it waits for the connection first, within the timeout.
   * @param {string} type @param {object} [fields] @returns {Promise<any>}
   */
  async request(type, fields = {}) {
    if (this.state !== "online") {
      if (this.state === "closed") throw new LobbyError(NOT_CONNECTED, "the client is closed");
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new LobbyError(TIMEOUT, `not reconnected in time for ${type}`)), this.timeout);
        this._waitingOnline.push(() => { clearTimeout(timer); resolve(); });
      });
    }
    return this._send(type, fields);
  }

  _send(type, fields) {
    return new Promise((resolve, reject) => {
      const ws = this._ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) {
        reject(new LobbyError(NOT_CONNECTED, "no open lobby connection"));
        return;
      }
      const id = this._nextId++;
      const wait = type === "start_session" ? this.startTimeout : this.timeout;
      const timer = setTimeout(() => {
        this._pending.delete(id);
        this._late.set(id, type); // a late reply still updates the mirror
        reject(new LobbyError(TIMEOUT, `no reply to ${type} within ${wait / 1000} s`));
      }, wait);
      this._pending.set(id, { type, timer, resolve, reject });
      ws.send(JSON.stringify({ ...fields, type, id }));
    });
  }

  _failPending(code, message) {
    for (const [id, p] of this._pending) {
      clearTimeout(p.timer);
      p.reject(new LobbyError(code, message));
      this._pending.delete(id);
    }
  }

  _onFrame(text) {
    let msg;
    try { msg = JSON.parse(text); } catch { return; }
    if (msg === null || typeof msg !== "object") return;
    if ("ok" in msg) this._onReply(msg);
    else this._onEvent(msg);
  }

  _onReply(msg) {
    const p = this._pending.get(msg.id);
    if (p) {
      this._pending.delete(msg.id);
      clearTimeout(p.timer);
      this._learn(p.type, msg);
      if (msg.ok === true) p.resolve(msg);
      else p.reject(new LobbyError(msg.error?.code, msg.error?.message, msg));
    } else if (this._late.has(msg.id)) {
      this._learn(this._late.get(msg.id), msg);
      this._late.delete(msg.id);
    }
  }

  _learn(type, msg) {
    if (msg.ok !== true) return;
    if (type === "leave_session") this._setSession(null);
    else if (msg.session && type !== "hello") {
      // create/join make it the mirrored session; any other reply's session (start,
      // update_session, ...) refreshes it when it is the same one.
      this._mirror(msg.session, type === "create_session" || type === "join_session");
    }
  }

  _mirror(snapshot, anyId) {
    const cur = this.session;
    if (cur && cur.session_id === snapshot.session_id) {
      if (snapshot.version < cur.version) return; // stale
    } else if (!anyId) {
      return;
    }
    this._setSession(snapshot);
  }

  _setSession(session) {
    this.session = session;
    this._emit("session", session);
  }

  _onEvent(ev) {
    const current = this.session && this.session.session_id === ev.session_id;
    if ((ev.type === "session_closed" || ev.type === "kicked") && current) this._setSession(null);
    else if (ev.type === "player_left" && ev.player_id === this.playerId && current) this._setSession(null);
    else if (ev.session) this._mirror(ev.session, false);
    this._emit(ev.type, ev, true);
  }

  // events -----------------------------------------------------------------------
  /**
   * Call `callback(event)` for each event of `type` ("*": every protocol event). Also
   * the client's own: "session" (the mirror changed), "reconnecting" (attempt),
   * "reconnected" (resumed), "session_lost", "disconnected" (close code).
   * @param {string} type @param {(value: any) => void} callback @returns {() => void} unsubscribe
   */
  on(type, callback) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(callback);
    return () => this._listeners.get(type)?.delete(callback);
  }

  /**
   * The next event of `type` (any type when omitted), within `timeout` seconds.
   * @param {string} [type] @param {number} [timeout] @returns {Promise<LobbyEvent>}
   */
  nextEvent(type, timeout) {
    return new Promise((resolve, reject) => {
      const off = this.on(type || "*", (ev) => { clearTimeout(timer); off(); resolve(ev); });
      const timer = setTimeout(() => { off(); reject(new LobbyError(TIMEOUT, `no ${type || "event"} in time`)); },
        (timeout ?? this.timeout / 1000) * 1000);
    });
  }

  _emit(type, value, protocolEvent = false) {
    const targets = [...(this._listeners.get(type) || [])];
    if (protocolEvent) targets.push(...(this._listeners.get("*") || []));
    for (const cb of targets) {
      try { cb(value); } catch (err) { console.error("lobby.js listener failed", err); }
    }
  }

  // one method per request ---------------------------------------------------------
  /**
   * @param {string} [name] @param {number} [maxPlayers] @param {string} [password]
   * @param {{attributes?: object, visibility?: "public" | "unlisted"}} [extra]
   * @returns {Promise<Session>}
   */
  async createSession(name, maxPlayers, password, extra = {}) {
    return (await this.request("create_session", given({ name, max_players: maxPlayers, password, ...extra }))).session;
  }

  /**
   * @param {number} [limit] @param {string} [cursor]
   * @param {{filter?: object, min_free_seats?: number, has_password?: boolean, sort?: string}} [search]
   * @returns {Promise<SessionPage>}
   */
  async listSessions(limit, cursor, search = {}) {
    const r = await this.request("list_sessions", given({ limit, cursor, ...search }));
    return { sessions: r.sessions, next_cursor: r.next_cursor };
  }

  /**
   * By session id, or with `{joinCode}` as the first argument: `joinSession({joinCode: "k7m-3qx"})`.
   * @param {string | {joinCode: string}} sessionId @param {string} [password] @returns {Promise<Session>}
   */
  async joinSession(sessionId, password) {
    const target = typeof sessionId === "object" && sessionId !== null
      ? { join_code: sessionId.joinCode } : { session_id: sessionId };
    return (await this.request("join_session", given({ ...target, password }))).session;
  }

  /**
   * Host only: change what is given (password "" removes it; an attribute set to null is deleted).
   * @param {{name?: string, max_players?: number, password?: string, attributes?: object,
   *   visibility?: "public" | "unlisted", locked?: boolean}} changes
   * @returns {Promise<Session>}
   */
  async updateSession(changes) { return (await this.request("update_session", { ...changes })).session; }

  /** @param {object} attributes @returns {Promise<void>} */
  async updatePlayer(attributes) { await this.request("update_player", { attributes }); }

  /** @param {string} playerId @returns {Promise<void>} */
  async promotePlayer(playerId) { await this.request("promote_player", { player_id: playerId }); }

  /** @returns {Promise<void>} */
  async leaveSession() { await this.request("leave_session"); }

  /** @param {string} playerId @param {{ban?: boolean}} [options] @returns {Promise<void>} */
  async kickPlayer(playerId, options = {}) { await this.request("kick_player", given({ player_id: playerId, ban: options.ban })); }

  /** @param {boolean} [ready] @returns {Promise<void>} */
  async setReady(ready = true) { await this.request("set_ready", { ready }); }

  /** @param {string} text @returns {Promise<void>} */
  async sendChat(text) { await this.request("send_chat", { text }); }

  /** Chat messages of the session, after `afterSeq` when given. @returns {Promise<object[]>} */
  async chatHistory(afterSeq) { return (await this.request("chat_history", given({ after_seq: afterSeq }))).messages; }

  /** @returns {Promise<Session>} */
  async startSession() { return (await this.request("start_session")).session; }

  /** @returns {Promise<JoinTicket>} */
  async joinTicket() {
    const r = await this.request("join_ticket");
    return { ticket: r.ticket, server_endpoint: r.server_endpoint, expires_at: r.expires_at };
  }

  /** @returns {Promise<void>} */
  async ping() { await this.request("ping"); }

  isHost() { return !!this.session && this.session.host_id === this.playerId; }
}

function given(fields) {
  const out = {};
  for (const [k, v] of Object.entries(fields)) if (v !== undefined && v !== null && v !== "") out[k] = v;
  return out;
}
