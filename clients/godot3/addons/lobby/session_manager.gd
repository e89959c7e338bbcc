# gdlint:ignore = max-public-methods
# SessionManager (autoload): the lobby WebSocket, its requests and events, the
# mirrored current session, and resume after a dropped socket.
# Godot 3 edition; the Godot 4 one (clients/godot) has the same API.
# The wire contract is protocol.md; the API is clients/godot/API.md.
extends Node

# connection
signal connection_state_changed(state)
signal connected()
signal authenticated(player_id, resumed)
signal reconnecting(attempt, delay)
signal reconnected(resumed)
signal disconnected(code, reason)
# protocol events
signal player_joined(player_id, player_name)
signal player_left(player_id, reason)
signal host_changed(host_id)
signal session_started(server_endpoint, server_id)
signal session_start_failed(code, message)
signal session_in_progress()
signal session_closed(reason)
signal kicked()
signal session_updated(session)
signal player_updated(player_id)
signal player_ready(player_id, ready)
signal chat_message(message)
signal player_disconnected(player_id, hold_until)
signal player_reconnected(player_id)
# mirror
signal session_changed(session)
signal event_received(event)
signal request_completed(request)

const LobbyRequestScript = preload("lobby_request.gd")
const CLOSE_REPLACED := 4001
const TOKEN_SECTION := "lobby"
const TOKEN_KEY := "resume_token"
const CHAT_KEEP := 50

var request_timeout := 10.0
# start_session's reply comes after the game server's claim, which GameLift's claim
# limit (20 a second per account) can hold back for up to 30 s in a burst of starts.
var start_timeout := 40.0
var reconnect_base_delay := 0.5
var reconnect_max_delay := 15.0
var max_reconnect_attempts := 12
var token_path := "user://lobby_resume.cfg"
var persist_token := true
var url := ""
var connection_state := "disconnected"
var player_id := ""
var player_name := ""
var session := {}
# The session's chat ({seq, player_id, name, text, sent_at}), oldest first, at
# most CHAT_KEEP, filled from replies (create, join, resume) and chat_message.
var chat_log := []
# Player id -> Unix time at which a dropped member's held seat is given up.
var hold_until := {}
# The identity token from the game's backend (a JWT, for a lobby run with --auth jwt):
# set by hello(name, token) or connect_and_hello(url, name, token) and sent with every
# hello after, the reconnects' too (a resume that fails still identifies the player).
var auth_token := ""

var _ws: WebSocketClient = null
var _socket_open := false
var _resume_token := ""
var _authenticated_once := false
var _next_id := 0
var _pending := {}
var _attempt := 0
var _reconnect_at_msec := 0
var _close_code := -1
var _close_reason := ""
var _closing_on_purpose := false
var _resume_hello_id := -1
var _rng := RandomNumberGenerator.new()
# The request of connect_and_hello() until it completes, and its name.
var _connect_request = null
var _connect_name := ""


func _ready() -> void:
	_rng.randomize()


func _process(_delta: float) -> void:
	if _ws != null:
		_ws.poll()
	var now := OS.get_ticks_msec()
	if connection_state == "reconnecting" and _ws == null and now >= _reconnect_at_msec:
		_open_socket()
	for id in _pending.keys():
		var req = _pending[id]
		if req.deadline_msec > 0 and now >= req.deadline_msec:
			_finish(req, _client_error(req, "TIMEOUT", "no reply from the lobby in time"))


# connection ------------------------------------------------------------------

func connect_to_lobby(lobby_url: String) -> int:
	url = lobby_url
	_closing_on_purpose = false
	_attempt = 0
	_drop_socket()
	return _open_socket()


# connect_to_lobby() and hello() in one, with an end either way: the returned request
# completes with the hello reply (ok: online, new or resumed) or with a client-made
# NOT_CONNECTED error saying why (the url was refused, every reconnect attempt failed,
# another socket of this player replaced this one, disconnect_from_lobby()).
func connect_and_hello(lobby_url: String, display_name := "", token := "") -> Reference:
	_fail_connect("superseded by a newer connect_and_hello()")
	if token != "":
		auth_token = token
	var req = LobbyRequestScript.new()
	_next_id += 1
	req.type = "hello"
	req.id = _next_id
	_connect_request = req
	_connect_name = display_name
	connect_to_lobby(lobby_url)
	return req


func _on_connect_hello(reply: Dictionary) -> void:
	var error = reply.get("error")
	if typeof(error) == TYPE_DICTIONARY and error.get("code") == "DISCONNECTED":
		return  # the reconnect that follows says hello again
	_finish_connect(reply)


func _finish_connect(reply: Dictionary) -> void:
	var req = _connect_request
	_connect_request = null
	if req != null:
		var copy := reply.duplicate()
		copy["id"] = req.id
		_finish(req, copy)


func _fail_connect(reason: String) -> void:
	if _connect_request != null:
		_finish_connect(_client_error(_connect_request, "NOT_CONNECTED", reason))


func disconnect_from_lobby() -> void:
	_closing_on_purpose = true
	if _ws != null and _socket_open:
		_ws.disconnect_from_host(1000, "bye")
		return
	_drop_socket()
	_lost(1000, "disconnected")


func _open_socket() -> int:
	_ws = WebSocketClient.new()
	# Room for a list_sessions page of 100 full sessions with attributes (the
	# default inbound buffer is 64 KiB): 4 MiB in, 64 KiB out.
	_ws.set_buffers(4096, 1024, 64, 1024)
	_ws.connect("connection_established", self, "_on_established")
	_ws.connect("connection_closed", self, "_on_closed")
	_ws.connect("connection_error", self, "_on_error")
	_ws.connect("server_close_request", self, "_on_close_request")
	_ws.connect("data_received", self, "_on_data")
	_close_code = -1
	_close_reason = ""
	if connection_state != "reconnecting":
		_set_state("connecting")
	var err := _ws.connect_to_url(url)
	if err != OK:
		_ws = null
		_lost(-1, "cannot connect to %s (error %d)" % [url, err])
	return err


func _drop_socket() -> void:
	if _ws != null:
		_ws.disconnect("connection_closed", self, "_on_closed")
		_ws.disconnect("connection_error", self, "_on_error")
		_ws.disconnect_from_host()
	_ws = null
	_socket_open = false


func _on_established(_protocol: String) -> void:
	# Text frames: the lobby refuses binary ones.
	_ws.get_peer(1).set_write_mode(WebSocketPeer.WRITE_MODE_TEXT)
	_socket_open = true
	var was_reconnecting := connection_state == "reconnecting"
	_set_state("online")
	emit_signal("connected")
	if was_reconnecting and _authenticated_once:
		var req = hello(player_name)
		_resume_hello_id = req.id
	elif _connect_request != null:
		var first = hello(_connect_name)
		first.connect("completed", self, "_on_connect_hello")


func _on_close_request(code: int, reason: String) -> void:
	_close_code = code
	_close_reason = reason


func _on_closed(_was_clean: bool) -> void:
	_ws = null
	_socket_open = false
	_lost(_close_code, _close_reason)


func _on_error() -> void:
	_ws = null
	_socket_open = false
	_lost(-1, "connection failed")


# The socket is gone: fail what waits for a reply, then reconnect unless the
# game closed it or the lobby said another socket replaced this one.
func _lost(code: int, reason: String) -> void:
	for id in _pending.keys():
		_finish(_pending[id], _client_error(_pending[id], "DISCONNECTED", "the socket dropped"))
	if _closing_on_purpose or code == CLOSE_REPLACED:
		_set_state("disconnected")
		_fail_connect("the connection was closed: %s (code %d)" % [reason, code])
		emit_signal("disconnected", code, reason)
		return
	_attempt += 1
	if _attempt > max_reconnect_attempts:
		_set_state("disconnected")
		_fail_connect("cannot reach %s: gave up after %d attempts" % [url, max_reconnect_attempts])
		emit_signal("disconnected", code, "gave up after %d attempts" % max_reconnect_attempts)
		return
	# Exponential backoff with jitter, so that a lobby restart is not met by
	# every client at the same instant.
	var ceiling := min(reconnect_max_delay, reconnect_base_delay * pow(2, _attempt - 1))
	var delay := ceiling * _rng.randf_range(0.5, 1.0)
	_reconnect_at_msec = OS.get_ticks_msec() + int(delay * 1000)
	_set_state("reconnecting")
	emit_signal("reconnecting", _attempt, delay)


func _set_state(state: String) -> void:
	if state != connection_state:
		connection_state = state
		emit_signal("connection_state_changed", state)


# requests --------------------------------------------------------------------

func hello(display_name := "", token := "") -> Reference:
	var fields := {}
	if display_name != "":
		fields["name"] = display_name
	if token != "":
		auth_token = token
	if auth_token != "":
		fields["token"] = auth_token
	if _resume_token == "" and persist_token:
		_resume_token = _load_token()
	if _resume_token != "":
		fields["resume_token"] = _resume_token
	return send_request("hello", fields)


func create_session(session_name := "", max_players := 0, password := "",
		attributes := {}, visibility := "", start_rule := "", min_players := 0) -> Reference:
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
	if not attributes.empty():
		fields["attributes"] = attributes
	if visibility != "":
		fields["visibility"] = visibility
	return send_request("create_session", fields)


func list_sessions(limit := 20, cursor := "", search := {}) -> Reference:
	# search: any of filter, min_free_seats, has_password, sort (protocol.md)
	var fields := search.duplicate()
	fields["limit"] = limit
	if cursor != "":
		fields["cursor"] = cursor
	return send_request("list_sessions", fields)


func join_session(session_id: String, password := "") -> Reference:
	var fields := {"session_id": session_id}
	if password != "":
		fields["password"] = password
	return send_request("join_session", fields)


func leave_session() -> Reference:
	return send_request("leave_session")


func start_session() -> Reference:
	return send_request("start_session")


func kick_player(target_id: String, ban := false) -> Reference:
	var fields := {"player_id": target_id}
	if ban:
		fields["ban"] = true
	return send_request("kick_player", fields)


## Joins the session a member shared the code of (case and dashes do not matter).
func join_by_code(join_code: String, password := "") -> Reference:
	var fields := {"join_code": join_code}
	if password != "":
		fields["password"] = password
	return send_request("join_session", fields)


## Host only, while WAITING: any of name, max_players, password ("" removes it),
## attributes (a key set to null is deleted), visibility, locked.
func update_session(changes: Dictionary) -> Reference:
	return send_request("update_session", changes)


## Your own attributes in your session (a key set to null is deleted).
func update_player(attributes: Dictionary) -> Reference:
	return send_request("update_player", {"attributes": attributes})


## Host only: makes another member the host.
func promote_player(target_id: String) -> Reference:
	return send_request("promote_player", {"player_id": target_id})


func join_ticket() -> Reference:
	return send_request("join_ticket")


func ping() -> Reference:
	return send_request("ping")


func set_ready(value: bool) -> Reference:
	return send_request("set_ready", {"ready": value})


func send_chat(text: String) -> Reference:
	return send_request("send_chat", {"text": text})


func chat_history(after_seq := 0) -> Reference:
	var fields := {}
	if after_seq > 0:
		fields["after_seq"] = after_seq
	return send_request("chat_history", fields)


func send_request(type: String, fields := {}) -> Reference:
	var req = LobbyRequestScript.new()
	_next_id += 1
	req.type = type
	req.id = _next_id
	_pending[req.id] = req
	if not _socket_open:
		_finish(req, _client_error(req, "NOT_CONNECTED", "not connected to the lobby"))
		return req
	var message: Dictionary = fields.duplicate()
	message["type"] = type
	message["id"] = req.id
	if _ws.get_peer(1).put_packet(JSON.print(message).to_utf8()) != OK:
		_finish(req, _client_error(req, "DISCONNECTED", "could not send"))
		return req
	var timeout := start_timeout if type == "start_session" else request_timeout
	req.deadline_msec = OS.get_ticks_msec() + int(timeout * 1000)
	return req


# Completion is deferred: a caller that yields on `completed` right after the
# call must not have missed it.
func _finish(req, reply: Dictionary) -> void:
	_pending.erase(req.id)
	req.deadline_msec = 0
	call_deferred("_deliver", req, reply)


func _deliver(req, reply: Dictionary) -> void:
	if req.complete_with(reply):
		emit_signal("request_completed", req)


func _client_error(req, code: String, message: String) -> Dictionary:
	return {"type": req.type, "id": req.id, "ok": false,
			"error": {"code": code, "message": message}}


func forget_identity() -> void:
	_resume_token = ""
	_authenticated_once = false
	if persist_token:
		var dir := Directory.new()
		if dir.file_exists(token_path):
			dir.remove(token_path)


# incoming --------------------------------------------------------------------

func _on_data() -> void:
	var peer := _ws.get_peer(1)
	while _ws != null and peer.get_available_packet_count() > 0:
		var text := peer.get_packet().get_string_from_utf8()
		var parsed := JSON.parse(text)
		if parsed.error != OK or typeof(parsed.result) != TYPE_DICTIONARY:
			push_warning("lobby: unreadable frame: %s" % text)
			continue
		var message: Dictionary = parsed.result
		if message.has("ok"):
			_on_reply(message)
		else:
			_on_event(message)


func _on_reply(reply: Dictionary) -> void:
	var rid = reply.get("id")
	var req = null
	if typeof(rid) == TYPE_REAL or typeof(rid) == TYPE_INT:
		req = _pending.get(int(rid))
	# A late reply (its request timed out) still carries the truth about the
	# session, so the mirror takes it even though nobody awaits it any more.
	_apply_reply(str(reply.get("type", "")), reply, int(rid) if req != null else -1)
	if req != null:
		_pending.erase(req.id)
		req.deadline_msec = 0
		_deliver(req, reply)


func _apply_reply(type: String, reply: Dictionary, rid: int) -> void:
	if not reply.get("ok", false):
		return
	match type:
		"hello":
			_on_hello(reply, rid == _resume_hello_id and rid != -1)
		"create_session", "join_session":
			_mirror(reply.get("session"), true)
			_take_chat(reply.get("chat"))
		"chat_history":
			_take_chat(reply.get("messages"))
		"start_session", "update_session":
			_mirror(reply.get("session"), false)
		"leave_session":
			_clear_mirror()


func _on_hello(reply: Dictionary, after_drop: bool) -> void:
	var had_session := not session.empty()
	var resumed := bool(reply.get("resumed", false))
	player_id = str(reply.get("player_id", ""))
	player_name = str(reply.get("name", ""))
	_resume_token = str(reply.get("resume_token", ""))
	_authenticated_once = true
	_attempt = 0
	if persist_token:
		_save_token(_resume_token)
	var snapshot = reply.get("session")
	if typeof(snapshot) == TYPE_DICTIONARY:
		_mirror(snapshot, true)
		_take_chat(reply.get("chat"))
	elif had_session:
		# The session ended (or the seat was lost) while the socket was down.
		_clear_mirror()
		emit_signal("session_closed", "lost")
	if _connect_request != null:
		_finish_connect(reply)  # whichever hello made it online: the first or a resume
	emit_signal("authenticated", player_id, resumed)
	if after_drop:
		_resume_hello_id = -1
		emit_signal("reconnected", resumed)


func _on_event(event: Dictionary) -> void:
	var type := str(event.get("type", ""))
	var sid := str(event.get("session_id", ""))
	# Events of a session this client is no longer in (in flight when it left)
	# must not touch the mirror nor reach the game as current news.
	if session.empty() or sid != str(session.get("session_id", "")):
		emit_signal("event_received", event)
		return
	# `kicked` carries the room as it is without this player: nothing to mirror.
	if typeof(event.get("session")) == TYPE_DICTIONARY and type != "kicked":
		_mirror(event["session"], false)
	match type:
		"chat_message":
			# Events come once each, in order: an older seq means the lobby lost its
			# store and the session's chat started again from 1.
			if not chat_log.empty() and int(event.get("seq", 0)) <= int(chat_log[-1]["seq"]):
				chat_log = []
			if _add_chat(event):
				emit_signal("chat_message", chat_log[chat_log.size() - 1])
		"player_ready":
			emit_signal("player_ready", str(event.get("player_id", "")),
					bool(event.get("ready", false)))
		"player_disconnected":
			var dropped := str(event.get("player_id", ""))
			var deadline = event.get("hold_until")
			if typeof(deadline) == TYPE_REAL or typeof(deadline) == TYPE_INT:
				hold_until[dropped] = float(deadline)
			emit_signal("player_disconnected", dropped, float(hold_until.get(dropped, 0.0)))
		"player_reconnected":
			var back := str(event.get("player_id", ""))
			hold_until.erase(back)
			emit_signal("player_reconnected", back)
		"player_joined":
			emit_signal("player_joined", str(event.get("player_id", "")),
					str(event.get("name", "")))
		"player_left":
			var who := str(event.get("player_id", ""))
			hold_until.erase(who)
			if who == player_id:
				_clear_mirror()
			emit_signal("player_left", who, str(event.get("reason", "")))
		"host_changed":
			emit_signal("host_changed", str(event.get("host_id", "")))
		"session_started":
			emit_signal("session_started", str(event.get("server_endpoint", "")),
					str(event.get("server_id", "")))
		"session_start_failed":
			var err = event.get("error", {})
			if typeof(err) != TYPE_DICTIONARY:
				err = {}
			emit_signal("session_start_failed", str(err.get("code", "")),
					str(err.get("message", "")))
		"session_in_progress":
			emit_signal("session_in_progress")
		"session_closed":
			_clear_mirror()
			emit_signal("session_closed", str(event.get("reason", "")))
		"kicked":
			_clear_mirror()
			emit_signal("kicked")
		"session_updated":
			emit_signal("session_updated", session)
		"player_updated":
			emit_signal("player_updated", str(event.get("player_id", "")))
	emit_signal("event_received", event)


# mirror ----------------------------------------------------------------------

# A snapshot older than the mirrored one is stale (protocol.md, `version`);
# `replace` is for replies that put the player into a (new) session.
func _mirror(snapshot, replace: bool) -> void:
	if typeof(snapshot) != TYPE_DICTIONARY:
		return
	var same := str(snapshot.get("session_id", "")) == str(session.get("session_id", ""))
	if same and int(snapshot.get("version", 0)) < int(session.get("version", 0)):
		return
	if not same and not replace and not session.empty():
		return
	if not same:
		chat_log = []
		hold_until = {}
	session = snapshot
	emit_signal("session_changed", session)


func _clear_mirror() -> void:
	if session.empty():
		return
	session = {}
	chat_log = []
	hold_until = {}
	emit_signal("session_changed", session)


# Messages of a reply (chat, messages): the ones newer than the log's last.
func _take_chat(messages) -> void:
	if typeof(messages) != TYPE_ARRAY:
		return
	for message in messages:
		if typeof(message) == TYPE_DICTIONARY:
			_add_chat(message)


func _add_chat(message: Dictionary) -> bool:
	var seq := int(message.get("seq", 0))
	if not chat_log.empty() and seq <= int(chat_log[chat_log.size() - 1]["seq"]):
		return false
	chat_log.append({"seq": seq, "player_id": str(message.get("player_id", "")),
			"name": str(message.get("name", "")), "text": str(message.get("text", "")),
			"sent_at": float(message.get("sent_at", 0.0))})
	while chat_log.size() > CHAT_KEEP:
		chat_log.pop_front()
	return true


func member(id: String) -> Dictionary:
	for player in members():
		if str(player.get("player_id", "")) == id:
			return player
	return {}


func is_ready(id: String) -> bool:
	return bool(member(id).get("ready", false))


func is_present(id: String) -> bool:
	return bool(member(id).get("connected", true)) and not member(id).empty()


# Seconds until a dropped member's seat is given up; 0 when not known or not held.
func hold_seconds_left(id: String) -> float:
	if not hold_until.has(id) or is_present(id):
		return 0.0
	return max(0.0, float(hold_until[id]) - OS.get_unix_time())


# Names of the members who are not ready, in join order.
func not_ready() -> Array:
	var out := []
	for player in members():
		if not bool(player.get("ready", false)):
			out.append(str(player.get("name", "")))
	return out


# Whether start_session would pass the session's start rule (min_players, and
# under all_ready every member ready); the host check is is_host().
func start_rule_met() -> bool:
	if not in_session() or session_state() != "WAITING":
		return false
	if members().size() < int(session.get("min_players", 1)):
		return false
	if str(session.get("start_rule", "host")) == "all_ready":
		return not_ready().empty()
	return true


func in_session() -> bool:
	return not session.empty()


func is_host() -> bool:
	# host_id is null in list_sessions entries of password rooms one is not in.
	var host = session.get("host_id")
	return in_session() and host != null and str(host) == player_id


func members() -> Array:
	return session.get("players", []) if in_session() else []


func session_state() -> String:
	return str(session.get("session_state", "")) if in_session() else ""


func server_endpoint() -> String:
	var endpoint = session.get("server_endpoint")
	return str(endpoint) if typeof(endpoint) == TYPE_STRING else ""


# resume token ----------------------------------------------------------------

func _load_token() -> String:
	var cfg := ConfigFile.new()
	if cfg.load(token_path) != OK:
		return ""
	return str(cfg.get_value(TOKEN_SECTION, TOKEN_KEY, ""))


func _save_token(token: String) -> void:
	var cfg := ConfigFile.new()
	cfg.set_value(TOKEN_SECTION, TOKEN_KEY, token)
	if cfg.save(token_path) != OK:
		push_warning("lobby: could not save the resume token to %s" % token_path)
