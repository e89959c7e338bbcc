extends Node  # gdlint:ignore = max-public-methods
## The lobby client, meant as the autoload `SessionManager` (clients/godot/API.md).
##
## Keeps one WebSocket to the lobby (protocol.md), polled in _process. Every request
## returns a LobbyRequest that completes exactly once: with the reply that carries its
## id, or with a client-made TIMEOUT, DISCONNECTED or NOT_CONNECTED reply.
## `session` mirrors the player's session from replies and events, and is updated
## before any signal about the change is emitted, so the UI only has to read it.
## When the socket drops (not by disconnect_from_lobby(), not close code 4001), it
## reconnects with exponential backoff and jitter and resumes with
## hello {resume_token}; the resume token is kept in memory and in `token_path`,
## so a game that crashed and restarts resumes too.

# Connection.
signal connection_state_changed(state: String)
signal connected()
signal authenticated(player_id: String, resumed: bool)
signal reconnecting(attempt: int, delay: float)
signal reconnected(resumed: bool)
signal disconnected(code: int, reason: String)
# Protocol events, one per event type of protocol.md.
signal player_joined(player_id: String, player_name: String)
signal player_left(player_id: String, reason: String)
signal host_changed(host_id: String)
signal session_started(server_endpoint: String, server_id: String)
signal session_start_failed(code: String, message: String)
signal session_in_progress()
signal session_closed(reason: String)
signal kicked()
signal session_updated(session: Dictionary)
signal player_updated(player_id: String)
signal player_ready(player_id: String, ready: bool)
signal chat_message(message: Dictionary)
signal player_disconnected(player_id: String, hold_until: float)
signal player_reconnected(player_id: String)
# Mirror.
signal session_changed(session: Dictionary)
signal event_received(event: Dictionary)
signal request_completed(request: LobbyRequestScript)

## The addon's scripts by path, not by class_name: a dedicated server run headless
## from a fresh checkout has no editor class cache to resolve LobbyRequest from.
const LobbyRequestScript := preload("lobby_request.gd")

const TOKEN_SECTION := "lobby"
const TOKEN_KEY := "resume_token"
## Close code of a socket replaced by a newer connection of the same player.
const CLOSE_REPLACED := 4001
## Room for a list_sessions page of 100 full sessions with attributes (default: 64 KiB).
const INBOUND_BUFFER_BYTES := 4194304
## At most this many closed sockets are still polled to finish their close handshake.
const MAX_CLOSING_SOCKETS := 4
## The server keeps a session's last 50 chat messages; the mirror keeps as many.
const CHAT_KEEP := 50

## Seconds a request waits for its reply before it completes with TIMEOUT.
var request_timeout := 10.0
## The same for start_session, whose reply comes after the game server's claim:
## GameLift's claim limit (20 a second per account) can hold it back for up to 30 s
## in a burst of starts.
var start_timeout := 40.0
## Reconnect attempt n waits min(max, base * 2^(n-1)) * rand(0.5, 1.0) seconds.
var reconnect_base_delay := 0.5
var reconnect_max_delay := 15.0
## After this many failed attempts in a row: disconnected(...) and no more tries.
var max_reconnect_attempts := 12
## ConfigFile holding the resume token: section "lobby", key "resume_token".
var token_path := "user://lobby_resume.cfg"
## Whether the resume token is written to (and read from) token_path.
var persist_token := true
## The last url given to connect_to_lobby().
var url: String = ""
## "disconnected", "connecting", "online" or "reconnecting".
var connection_state: String = "disconnected"
## This player's id; "" before the first hello.
var player_id: String = ""
var player_name: String = ""
## The mirrored session object of protocol.md; {} when in no session.
var session: Dictionary = {}
## The session's chat ({seq, player_id, name, text, sent_at}), oldest first, at most
## CHAT_KEEP: from the create, join and resuming hello replies and chat_message events.
var chat_log: Array = []
## Player id -> Unix time at which a dropped member's held seat is given up.
var hold_until: Dictionary = {}
## The identity token from the game's backend (a JWT, for a lobby run with --auth jwt):
## set by hello(name, token) or connect_and_hello(url, name, token) and sent with every
## hello after, the reconnects' too (a resume that fails still identifies the player).
var auth_token := ""

var _socket: WebSocketPeer = null
var _socket_open := false
var _socket_started_msec := 0
var _closing_sockets: Array[WebSocketPeer] = []
var _hello_done := false
var _ever_authenticated := false
var _resume_token := ""
var _resume_request_id := -1
var _next_id := 0
## id -> [LobbyRequestScript, deadline in msec]
var _pending := {}
## id -> type of requests that timed out: a late reply still updates the mirror.
var _late := {}
var _attempt := 0
var _retry_at_msec := 0
## The request of connect_and_hello() until it completes, and its name.
var _connect_request: LobbyRequestScript = null
var _connect_name := ""


func _ready() -> void:
	# The lobby socket keeps working in a paused menu.
	process_mode = Node.PROCESS_MODE_ALWAYS


func _process(_delta: float) -> void:
	_poll_closing_sockets()
	if _socket != null:
		_poll_socket()
	elif _retry_at_msec > 0 and Time.get_ticks_msec() >= _retry_at_msec:
		_retry_at_msec = 0
		var err := _open_socket()
		if err != OK:
			_lost_socket(-1, "connect_to_url failed (error %d)" % err)
	_expire_requests()


## Opens the socket to `url` (ws://HOST:PORT/ws). Returns OK or an Error;
## `connected` is emitted once the socket is open. Any previous socket is closed.
func connect_to_lobby(lobby_url: String) -> int:
	_drop_socket(1000, "reconnecting elsewhere")
	url = lobby_url
	_attempt = 0
	var err := _open_socket()
	if err != OK:
		_set_state("disconnected")
		return err
	_set_state("connecting")
	return OK


## connect_to_lobby() and hello() in one, with an end either way: the returned request
## completes with the hello reply (ok: online, as a new or a resumed player) or with a
## client-made NOT_CONNECTED error that says why (the url was refused, every reconnect
## attempt failed, another socket of this player replaced this one, or
## disconnect_from_lobby() was called). `await SessionManager.connected` alone never
## returns when the lobby cannot be reached; this does.
func connect_and_hello(lobby_url: String, display_name := "", token := "") -> LobbyRequestScript:
	_fail_connect("superseded by a newer connect_and_hello()")
	if token != "":
		auth_token = token
	var req := _new_request("hello")
	_connect_request = req
	_connect_name = display_name
	var err := connect_to_lobby(lobby_url)
	if err != OK:
		_fail_connect("cannot connect to %s (error %d)" % [lobby_url, err])
	return req


## Closes the socket for good: no reconnect. Pending requests complete with
## DISCONNECTED. The resume token is kept (hello() after connect_to_lobby() resumes).
func disconnect_from_lobby() -> void:
	var was := connection_state
	_drop_socket(1000, "client disconnect")
	_attempt = 0
	_set_state("disconnected")
	_fail_connect("disconnect_from_lobby() was called")
	if was != "disconnected":
		disconnected.emit(1000, "disconnect_from_lobby")


## Must come first on each socket. Sends the resume token too when one is known
## (in memory, else in token_path), so a restarted game is the same player again.
func hello(display_name := "", token := "") -> LobbyRequestScript:
	var fields := {}
	if display_name != "":
		fields["name"] = display_name
	if token != "":
		auth_token = token
	if auth_token != "":
		fields["token"] = auth_token
	var token := _known_token()
	if token != "":
		fields["resume_token"] = token
	return _request("hello", fields, false)


## `max_players` 0 and `password` "" are left out (the server's defaults).
## `start_rule` "" and `min_players` 0 too ("host" and 1).
func create_session(session_name := "", max_players := 0, password := "",
		attributes := {}, visibility := "", start_rule := "", min_players := 0
		) -> LobbyRequestScript:
	var fields := {}
	if start_rule != "":
		fields["start_rule"] = start_rule
	if min_players > 0:
		fields["min_players"] = min_players
	if session_name != "":
		fields["name"] = session_name
	if max_players > 0:
		fields["max_players"] = max_players
	if password != "":
		fields["password"] = password
	if not attributes.is_empty():
		fields["attributes"] = attributes
	if visibility != "":
		fields["visibility"] = visibility
	return _request("create_session", fields, true)


## One page of WAITING sessions with a free seat; pass the reply's next_cursor
## as `cursor` for the next page ("" for the first).
func list_sessions(limit := 20, cursor := "", search := {}) -> LobbyRequestScript:
	# search: any of filter, min_free_seats, has_password, sort (protocol.md)
	var fields := search.duplicate()
	fields["limit"] = limit
	if cursor != "":
		fields["cursor"] = cursor
	return _request("list_sessions", fields, true)


func join_session(session_id: String, password := "") -> LobbyRequestScript:
	var fields := {"session_id": session_id}
	if password != "":
		fields["password"] = password
	return _request("join_session", fields, true)


func leave_session() -> LobbyRequestScript:
	return _request("leave_session", {}, true)


## Host only. The reply comes once a game server is claimed (or NO_SERVER_AVAILABLE).
func start_session() -> LobbyRequestScript:
	return _request("start_session", {}, true)


## Host only, while WAITING.
func kick_player(target_id: String, ban := false) -> LobbyRequestScript:
	var fields := {"player_id": target_id}
	if ban:
		fields["ban"] = true
	return _request("kick_player", fields, true)


## Joins the session a member shared the code of (case and dashes do not matter).
func join_by_code(join_code: String, password := "") -> LobbyRequestScript:
	var fields := {"join_code": join_code}
	if password != "":
		fields["password"] = password
	return _request("join_session", fields, true)


## Host only, while WAITING: any of name, max_players, password ("" removes it),
## attributes (a key set to null is deleted), visibility, locked.
func update_session(changes: Dictionary) -> LobbyRequestScript:
	return _request("update_session", changes, true)


## Your own attributes in your session (a key set to null is deleted).
func update_player(attributes: Dictionary) -> LobbyRequestScript:
	return _request("update_player", {"attributes": attributes}, true)


## Host only: makes another member the host.
func promote_player(target_id: String) -> LobbyRequestScript:
	return _request("promote_player", {"player_id": target_id}, true)


## The player's ticket for the session's game server:
## {ticket, server_endpoint, expires_at}.
func join_ticket() -> LobbyRequestScript:
	return _request("join_ticket", {}, true)


func ping() -> LobbyRequestScript:
	return _request("ping", {}, true)


## Your ready flag in your (WAITING) session; everyone gets player_ready.
func set_ready(value: bool) -> LobbyRequestScript:
	return _request("set_ready", {"ready": value}, true)


## 1-500 characters, newlines allowed; at most 5 per 5 s (else RATE_LIMITED).
func send_chat(text: String) -> LobbyRequestScript:
	return _request("send_chat", {"text": text}, true)


## {messages}: the kept messages with seq > after_seq (0: all); they join chat_log.
func chat_history(after_seq := 0) -> LobbyRequestScript:
	var fields := {}
	if after_seq > 0:
		fields["after_seq"] = after_seq
	return _request("chat_history", fields, true)


## Any request, for extensions of the protocol. `fields` must not hold "type" or "id".
func send_request(type: String, fields := {}) -> LobbyRequestScript:
	return _request(type, fields, type != "hello")


## Drops the resume token (memory and file): the next hello is a new player.
func forget_identity() -> void:
	_resume_token = ""
	var cfg := ConfigFile.new()
	if cfg.load(token_path) == OK and cfg.has_section_key(TOKEN_SECTION, TOKEN_KEY):
		cfg.erase_section_key(TOKEN_SECTION, TOKEN_KEY)
		cfg.save(token_path)


func in_session() -> bool:
	return not session.is_empty()


func is_host() -> bool:
	return in_session() and player_id != "" and _text(session, "host_id") == player_id


## The members as [{player_id, name}] in join order, or [] when in no session.
func members() -> Array:
	var players: Variant = session.get("players")
	if players is Array:
		return players
	return []


## The member with that id ({player_id, name, ready, connected}), or {}.
func member(id: String) -> Dictionary:
	for player in members():
		if player is Dictionary and _text(player, "player_id") == id:
			return player
	return {}


func is_ready(id: String) -> bool:
	return member(id).get("ready", false) == true


## False while that member's socket is down and their seat held.
func is_present(id: String) -> bool:
	var found := member(id)
	return not found.is_empty() and found.get("connected", true) != false


## Seconds until a dropped member's seat is given up; 0 when not known or not held.
func hold_seconds_left(id: String) -> float:
	if not hold_until.has(id) or is_present(id):
		return 0.0
	return maxf(0.0, float(hold_until[id]) - Time.get_unix_time_from_system())


## Names of the members who are not ready, in join order.
func not_ready() -> Array:
	var out := []
	for player in members():
		if player is Dictionary and player.get("ready", false) != true:
			out.append(_text(player, "name"))
	return out


## Whether start_session would pass the session's start rule (min_players, and under
## all_ready every member ready); whether you may start at all is is_host().
func start_rule_met() -> bool:
	if session_state() != "WAITING":
		return false
	if members().size() < _number(session.get("min_players", 1)):
		return false
	if _text(session, "start_rule") == "all_ready":
		return not_ready().is_empty()
	return true


## "WAITING", "CONNECTING", "IN_PROGRESS", or "" when in no session.
func session_state() -> String:
	return _text(session, "session_state")


## "host:port" of the game server, "" until the session is started.
func server_endpoint() -> String:
	return _text(session, "server_endpoint")


# --- requests ---------------------------------------------------------------


func _request(type: String, fields: Dictionary, needs_hello: bool) -> LobbyRequestScript:
	var usable := connection_state == "online" and _socket_open
	if usable and (_hello_done or not needs_hello):
		return _send(type, fields)
	var req := _new_request(type)
	var why := "no open lobby connection (%s)" % connection_state
	if usable:
		why = "hello has not been answered on this connection"
	_complete(req, _client_error(req, "NOT_CONNECTED", why))
	return req


func _send(type: String, fields: Dictionary) -> LobbyRequestScript:
	var req := _new_request(type)
	if _socket == null:
		_complete(req, _client_error(req, "NOT_CONNECTED", "no open lobby connection"))
		return req
	var msg := fields.duplicate()
	msg["type"] = type
	msg["id"] = req.id
	var timeout := start_timeout if type == "start_session" else request_timeout
	_pending[req.id] = [req, Time.get_ticks_msec() + int(timeout * 1000.0)]
	var err := _socket.send_text(JSON.stringify(_ints_on_wire(msg)))
	if err != OK:
		_complete(req, _client_error(req, "NOT_CONNECTED", "send failed (error %d)" % err))
	return req


## JSON numbers parsed by Godot are floats, and JSON.stringify writes a float as 4.0,
## which a strict server may refuse as an integer field. Every integral float goes
## out as an int (the protocol has no float request fields).
static func _ints_on_wire(value: Variant) -> Variant:
	if value is float and is_finite(value) and value == floorf(value) and absf(value) < 1e15:
		return int(value)
	if value is Dictionary:
		var out := {}
		for key in value:
			out[key] = _ints_on_wire(value[key])
		return out
	if value is Array:
		var items := []
		for item in value:
			items.append(_ints_on_wire(item))
		return items
	return value


func _new_request(type: String) -> LobbyRequestScript:
	_next_id += 1
	return LobbyRequestScript.new(type, _next_id)


func _client_error(req: LobbyRequestScript, code: String, message: String) -> Dictionary:
	return {"type": req.type, "id": req.id, "ok": false, "error": {"code": code, "message": message}}


## Marks `req` done now and emits its signals on the next idle step, never inside the
## caller. The deferred call holds `req` as an argument, which keeps it alive until then.
func _complete(req: LobbyRequestScript, reply: Dictionary) -> void:
	if req.done:
		return
	_pending.erase(req.id)
	req.reply = reply
	req.done = true
	_deliver.call_deferred(req)
	if req.id == _resume_request_id and not req.ok():
		_resume_request_id = -1
		if req.error_code() != "DISCONNECTED":
			_resume_failed.call_deferred(_socket)


func _deliver(req: LobbyRequestScript) -> void:
	req.completed.emit(req.reply)
	request_completed.emit(req)


func _expire_requests() -> void:
	if _pending.is_empty():
		return
	var now := Time.get_ticks_msec()
	for id in _pending.keys():
		var entry: Array = _pending.get(id, [])
		if entry.is_empty() or now < int(entry[1]):
			continue
		var req: LobbyRequestScript = entry[0]
		_late[id] = req.type
		var waited := start_timeout if req.type == "start_session" else request_timeout
		_complete(req, _client_error(req, "TIMEOUT", "no reply within %.1f s" % waited))


func _fail_pending(code: String, message: String) -> void:
	for id in _pending.keys():
		var req: LobbyRequestScript = _pending[id][0]
		_complete(req, _client_error(req, code, message))


# --- socket -----------------------------------------------------------------


func _open_socket() -> int:
	var ws := WebSocketPeer.new()
	ws.inbound_buffer_size = INBOUND_BUFFER_BYTES
	var err := ws.connect_to_url(url)
	if err != OK:
		return err
	_socket = ws
	_socket_open = false
	_socket_started_msec = Time.get_ticks_msec()
	return OK


func _poll_socket() -> void:
	var ws := _socket
	ws.poll()
	var state := ws.get_ready_state()
	if state == WebSocketPeer.STATE_OPEN and not _socket_open:
		_socket_open = true
		_on_open()
		if ws != _socket:
			return
	while ws.get_available_packet_count() > 0:
		var packet := ws.get_packet()
		if ws.was_string_packet():
			_on_text(packet.get_string_from_utf8())
		if ws != _socket:
			return
	if state == WebSocketPeer.STATE_CLOSED:
		_socket = null
		_lost_socket(ws.get_close_code(), ws.get_close_reason())
	elif state == WebSocketPeer.STATE_CONNECTING:
		if Time.get_ticks_msec() - _socket_started_msec > int(request_timeout * 1000.0):
			_socket = null
			_retire_socket(ws, 1000, "connect timeout")
			_lost_socket(-1, "connect timeout")


func _on_open() -> void:
	if connection_state == "reconnecting" and _ever_authenticated and _known_token() != "":
		# Stay "reconnecting" until the resume hello is answered.
		var fields := {"resume_token": _known_token()}
		if auth_token != "":
			fields["token"] = auth_token
		var req := _send("hello", fields)
		if req.done:
			_resume_failed.call_deferred(_socket)  # could not even be sent
		else:
			_resume_request_id = req.id
		connected.emit()
		return
	_attempt = 0
	_set_state("online")
	connected.emit()
	if _connect_request != null and not _hello_done:
		hello(_connect_name).completed.connect(_on_connect_hello)


## The hello of connect_and_hello() is answered: that ends it, unless the socket
## dropped first (the reconnect that follows says hello again).
func _on_connect_hello(reply: Dictionary) -> void:
	if _connect_request == null:
		return
	var error: Variant = reply.get("error")
	if error is Dictionary and error.get("code") == "DISCONNECTED":
		return
	_finish_connect(reply)


func _finish_connect(reply: Dictionary) -> void:
	var req := _connect_request
	_connect_request = null
	if req != null:
		var copy := reply.duplicate()
		copy["id"] = req.id
		_complete(req, copy)


func _fail_connect(reason: String) -> void:
	if _connect_request != null:
		_finish_connect(_client_error(_connect_request, "NOT_CONNECTED", reason))


## The socket is gone (closed by the server, dropped, or never opened).
func _lost_socket(code: int, reason: String) -> void:
	_socket_open = false
	_hello_done = false
	_resume_request_id = -1
	_late.clear()
	_fail_pending("DISCONNECTED", "the lobby connection dropped")
	if code == CLOSE_REPLACED:
		_attempt = 0
		_set_state("disconnected")
		_fail_connect("replaced by a newer connection of this player (close code 4001)")
		disconnected.emit(code, reason if reason != "" else "replaced by a newer connection")
		return
	_schedule_reconnect(code)


func _schedule_reconnect(code: int) -> void:
	_attempt += 1
	if _attempt > max_reconnect_attempts:
		_attempt = 0
		_set_state("disconnected")
		_fail_connect(
			"cannot reach %s: gave up after %d attempts" % [url, max_reconnect_attempts]
		)
		disconnected.emit(code, "gave up after %d reconnect attempts" % max_reconnect_attempts)
		return
	var delay := minf(reconnect_max_delay, reconnect_base_delay * pow(2.0, _attempt - 1))
	delay *= randf_range(0.5, 1.0)
	_retry_at_msec = Time.get_ticks_msec() + int(delay * 1000.0)
	_set_state("reconnecting")
	reconnecting.emit(_attempt, delay)


## The resume hello was refused or timed out: drop this socket and try again later.
func _resume_failed(ws: WebSocketPeer) -> void:
	if ws == null or ws != _socket:
		return
	_socket = null
	_retire_socket(ws, 1000, "resume failed")
	_lost_socket(-1, "resume failed")


## Closes our current socket on purpose, without reconnecting.
func _drop_socket(code: int, reason: String) -> void:
	_retry_at_msec = 0
	if _socket != null:
		var ws := _socket
		_socket = null
		_retire_socket(ws, code, reason)
	_socket_open = false
	_hello_done = false
	_resume_request_id = -1
	_late.clear()
	_fail_pending("DISCONNECTED", "the lobby connection was closed")


## Starts the close handshake and keeps polling the socket until it is closed.
func _retire_socket(ws: WebSocketPeer, code: int, reason: String) -> void:
	ws.close(code, reason)
	_closing_sockets.append(ws)
	while _closing_sockets.size() > MAX_CLOSING_SOCKETS:
		_closing_sockets.pop_front()


func _poll_closing_sockets() -> void:
	for ws in _closing_sockets.duplicate():
		ws.poll()
		if ws.get_ready_state() == WebSocketPeer.STATE_CLOSED:
			_closing_sockets.erase(ws)


func _set_state(state: String) -> void:
	if state == connection_state:
		return
	connection_state = state
	connection_state_changed.emit(state)


# --- incoming frames --------------------------------------------------------


func _on_text(text: String) -> void:
	var parsed: Variant = JSON.parse_string(text)
	if not (parsed is Dictionary):
		return
	var msg: Dictionary = parsed
	if msg.has("ok"):
		_on_reply(msg)
	elif msg.has("type"):
		_on_event(msg)


func _on_reply(msg: Dictionary) -> void:
	var raw_id: Variant = msg.get("id")
	if not (raw_id is int or raw_id is float):
		return  # a reply to a frame the server could not read: no request to complete
	var id := int(raw_id)
	if _pending.has(id):
		var req: LobbyRequestScript = _pending[id][0]
		_on_answer(req.type, msg, id == _resume_request_id)
		_complete(req, msg)
	elif _late.has(id):
		var late_type: String = _late[id]
		_late.erase(id)
		_on_answer(late_type, msg, false)


## What a reply teaches the client, before the request completes.
func _on_answer(type: String, msg: Dictionary, is_resume: bool) -> void:
	if msg.get("ok", false) != true:
		return
	var snapshot: Variant = msg.get("session")
	match type:
		"hello":
			_on_hello_ok(msg, is_resume)
		"create_session", "join_session":
			if snapshot is Dictionary:
				_mirror(snapshot, true)
				_take_chat(msg.get("chat"))
		"chat_history":
			_take_chat(msg.get("messages"))
		"leave_session":
			_clear_session()
		_:
			if snapshot is Dictionary:
				_mirror(snapshot, false)


func _on_hello_ok(msg: Dictionary, is_resume: bool) -> void:
	player_id = _text(msg, "player_id")
	player_name = _text(msg, "name")
	var token := _text(msg, "resume_token")
	if token != "":
		_resume_token = token
		_store_token(token)
	_hello_done = true
	_ever_authenticated = true
	var resumed: bool = msg.get("resumed", false) == true
	var snapshot: Variant = msg.get("session")
	var lost := false
	if snapshot is Dictionary and not snapshot.is_empty():
		_mirror(snapshot, true)
		_take_chat(msg.get("chat"))
	elif in_session():
		# Not resumed (token unknown or expired), or the session ended meanwhile.
		_clear_session()
		lost = true
	if is_resume:
		_resume_request_id = -1
		_attempt = 0
		_set_state("online")
	if _connect_request != null:
		_finish_connect(msg)  # whichever hello made it online: the first or a resume
	authenticated.emit(player_id, resumed)
	if is_resume:
		reconnected.emit(resumed)
	if lost:
		session_closed.emit("lost")


func _on_event(event: Dictionary) -> void:
	var raw: Variant = event.get("session")
	var snapshot: Dictionary = raw if raw is Dictionary else {}
	var current := _is_current(event)
	match _text(event, "type"):
		"player_joined":
			_mirror(snapshot, false)
			player_joined.emit(_text(event, "player_id"), _text(event, "name"))
		"player_left":
			var who := _text(event, "player_id")
			hold_until.erase(who)
			if who != "" and who == player_id and current:
				_clear_session()
			else:
				_mirror(snapshot, false)
			player_left.emit(who, _text(event, "reason"))
		"host_changed":
			_mirror(snapshot, false)
			host_changed.emit(_text(event, "host_id"))
		"session_started":
			_mirror(snapshot, false)
			session_started.emit(_text(event, "server_endpoint"), _text(event, "server_id"))
		"session_start_failed":
			_mirror(snapshot, false)
			var raw_error: Variant = event.get("error")
			var error: Dictionary = raw_error if raw_error is Dictionary else {}
			session_start_failed.emit(_text(error, "code"), _text(error, "message"))
		"session_in_progress":
			_mirror(snapshot, false)
			session_in_progress.emit()
		"session_closed":
			if current:
				_clear_session()
				session_closed.emit(_text(event, "reason"))
		"kicked":
			if current:
				_clear_session()
				kicked.emit()
		"session_updated":
			_mirror(snapshot, false)
			session_updated.emit(session)
		"player_updated":
			_mirror(snapshot, false)
			player_updated.emit(_text(event, "player_id"))
		"player_ready":
			if current and in_session():
				_mirror(snapshot, false)
				player_ready.emit(_text(event, "player_id"), event.get("ready", false) == true)
		"chat_message":
			# Events come once each, in order: an older seq means the lobby lost its
			# store and the session's chat started again from 1.
			if not chat_log.is_empty() and _number(event.get("seq")) <= _number(chat_log[-1].get("seq")):
				chat_log = []
			if current and in_session() and _add_chat(event):
				chat_message.emit(chat_log[chat_log.size() - 1])
		"player_disconnected":
			if current and in_session():
				_mirror(snapshot, false)
				var dropped := _text(event, "player_id")
				var deadline: Variant = event.get("hold_until")
				if deadline is float or deadline is int:
					hold_until[dropped] = float(deadline)
				player_disconnected.emit(dropped, float(hold_until.get(dropped, 0.0)))
		"player_reconnected":
			if current and in_session():
				_mirror(snapshot, false)
				var back := _text(event, "player_id")
				hold_until.erase(back)
				player_reconnected.emit(back)
	event_received.emit(event)


# --- mirror -----------------------------------------------------------------


## Takes `snapshot` as the session when it is the mirrored one and not older, or,
## with `any_id` (create/join/hello replies), whatever session it is.
func _mirror(snapshot: Dictionary, any_id: bool) -> void:
	var sid := _text(snapshot, "session_id")
	if sid == "":
		return
	if sid == _text(session, "session_id"):
		if _number(snapshot.get("version")) < _number(session.get("version")):
			return  # stale
	elif not any_id:
		return
	else:
		chat_log = []
		hold_until = {}
	session = snapshot
	session_changed.emit(session)


func _clear_session() -> void:
	if session.is_empty():
		return
	session = {}
	chat_log = []
	hold_until = {}
	session_changed.emit(session)


## The messages of a reply (chat, messages) newer than the log's last one.
func _take_chat(messages: Variant) -> void:
	if not messages is Array:
		return
	for message in messages:
		if message is Dictionary:
			_add_chat(message)


func _add_chat(message: Dictionary) -> bool:
	var seq := _number(message.get("seq"))
	if not chat_log.is_empty() and seq <= _number(chat_log[chat_log.size() - 1].get("seq")):
		return false
	chat_log.append({"seq": seq, "player_id": _text(message, "player_id"),
			"name": _text(message, "name"), "text": _text(message, "text"),
			"sent_at": float(message.get("sent_at", 0.0))})
	while chat_log.size() > CHAT_KEEP:
		chat_log.pop_front()
	return true


## Whether an event is about the mirrored session (or we mirror none).
func _is_current(event: Dictionary) -> bool:
	var sid := _text(event, "session_id")
	return sid == "" or not in_session() or sid == _text(session, "session_id")


# --- resume token -----------------------------------------------------------


func _known_token() -> String:
	if _resume_token == "" and persist_token:
		var cfg := ConfigFile.new()
		if cfg.load(token_path) == OK:
			_resume_token = str(cfg.get_value(TOKEN_SECTION, TOKEN_KEY, ""))
	return _resume_token


func _store_token(token: String) -> void:
	if not persist_token:
		return
	var cfg := ConfigFile.new()
	cfg.load(token_path)  # a missing file is fine: it is created below
	cfg.set_value(TOKEN_SECTION, TOKEN_KEY, token)
	var err := cfg.save(token_path)
	if err != OK:
		push_warning("SessionManager: cannot save the resume token to %s (error %d)" % [
			token_path, err
		])


static func _text(data: Dictionary, key: String) -> String:
	var value: Variant = data.get(key)
	if value == null:
		return ""
	return str(value)


static func _number(value: Variant) -> float:
	if value is int or value is float:
		return float(value)
	return 0.0
