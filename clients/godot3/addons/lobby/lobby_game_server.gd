# LobbyGameServer: the dedicated game server's side of the lobby. It serves
# ENet, admits a peer only with a valid join ticket (checked offline with the
# server key), learns its session from the lobby's game-server HTTP API by its
# FleetIQ server id, and reports in-progress and complete.
# Its FleetIQ life goes through the lobby too (no AWS SDK): register() when
# ready, a heartbeat every heartbeat_interval seconds whose answer names the
# session to host, and, after complete (the lobby deregisters the server) or
# when the lobby says SERVER_NOT_REGISTERED (its session failed), register
# again for the next match (auto_reregister).
# Godot 3 edition; the Godot 4 one (clients/godot) has the same API.
#
# Godot 3 has no connection-level authentication: a peer is connected before
# it presents its ticket. Game RPCs must therefore check is_admitted(sender).
extends Node

signal session_loaded(session)
signal player_admitted(peer_id, player_id)
signal player_refused(peer_id, reason)
signal player_disconnected(peer_id, player_id)
signal reported(call, ok, status)
# ok: registered (also when the lobby answers 409: a live session uses this
# server, e.g. after a restart mid-match); status is the HTTP status.
signal registered(ok, status)
# The heartbeat named a session for this server to host.
signal session_assigned(session)
# The match is over for this server: completed, or its session failed.
signal match_ended()

const LobbyTicketScript = preload("lobby_ticket.gd")
const TicketGateScript = preload("ticket_gate.gd")
# Lets the refusal RPC reach the peer before it is dropped.
const REFUSE_GRACE_MSEC := 200

var lobby_url := ""
var server_key := ""
var server_id := ""
var ticket_timeout := 5.0
var auto_in_progress := true
var session := {}
var peer: NetworkedMultiplayerENet = null
# FleetIQ registration (through the lobby): the EC2 instance id, what players
# connect to ("ip:port"), and optional GameServerData until claimed.
var instance_id := ""
var connection_info := ""
var server_data := ""
var heartbeat_interval := 5.0
var auto_reregister := true
var is_registered := false

var _registering := false
var _beating := false
var _next_beat_msec := 0
var _retry_register_msec := -1
var _assigned_id := ""

# peer id -> {"player_id": String, "admitted": bool, "since": msec}
var _peers := {}
# [peer_id, ticket claims] waiting for the session to be (re)loaded
var _waiting := []
var _fetching := false
var _in_progress_reported := false
# peer id -> msec at which to drop a refused peer
var _dropping := {}
var _gate: Node = null


func serve(port: int, max_clients := 32) -> int:
	peer = NetworkedMultiplayerENet.new()
	var err := peer.create_server(port, max_clients)
	if err != OK:
		peer = null
		return err
	peer.connect("peer_connected", self, "_on_peer_connected")
	peer.connect("peer_disconnected", self, "_on_peer_disconnected")
	get_tree().network_peer = peer
	_gate = TicketGateScript.ensure(get_tree(), TicketGateScript)
	_gate.connect("ticket_presented", self, "_on_ticket_presented")
	return OK


func _process(_delta: float) -> void:
	var now := OS.get_ticks_msec()
	if is_registered and not _beating and now >= _next_beat_msec:
		_next_beat_msec = now + int(heartbeat_interval * 1000)
		heartbeat()
	if _retry_register_msec >= 0 and now >= _retry_register_msec:
		_retry_register_msec = -1
		register()
	for peer_id in _peers.keys():
		var info: Dictionary = _peers[peer_id]
		if not info["admitted"] and not _dropping.has(peer_id):
			if now - int(info["since"]) > int(ticket_timeout * 1000):
				_refuse(peer_id, "timeout")
	for peer_id in _dropping.keys():
		if now >= _dropping[peer_id]:
			_dropping.erase(peer_id)
			if peer != null and _peers.has(peer_id):
				peer.disconnect_peer(peer_id)


func verify_ticket(ticket: String) -> Dictionary:
	return LobbyTicketScript.verify(ticket, server_key, OS.get_unix_time())


func is_admitted(peer_id: int) -> bool:
	return _peers.has(peer_id) and _peers[peer_id]["admitted"]


func player_of(peer_id: int) -> String:
	return str(_peers[peer_id]["player_id"]) if is_admitted(peer_id) else ""


func _on_peer_connected(peer_id: int) -> void:
	_peers[peer_id] = {"player_id": "", "admitted": false, "since": OS.get_ticks_msec()}


func _on_peer_disconnected(peer_id: int) -> void:
	var info = _peers.get(peer_id)
	_peers.erase(peer_id)
	_dropping.erase(peer_id)
	if info != null and info["admitted"]:
		emit_signal("player_disconnected", peer_id, info["player_id"])


func _on_ticket_presented(peer_id: int, ticket: String) -> void:
	if not _peers.has(peer_id) or _peers[peer_id]["admitted"] or _dropping.has(peer_id):
		return
	var claims := verify_ticket(ticket)
	if not claims["ok"]:
		_refuse(peer_id, claims["error"])
		return
	if _serves(claims):
		_admit(peer_id, claims["player_id"])
		return
	# Signed by the lobby but not for the session as last loaded: the server
	# may have been claimed since, or the list may predate this player.
	_waiting.append([peer_id, claims])
	fetch_session()


func _serves(claims: Dictionary) -> bool:
	if session.empty() or str(session.get("session_id", "")) != claims["session_id"]:
		return false
	for player in session.get("players", []):
		if str(player.get("player_id", "")) == claims["player_id"]:
			return true
	return false


func _admit(peer_id: int, admitted_id: String) -> void:
	# A reconnecting player may arrive before its old link timed out: the new
	# link wins, the old one is dropped.
	for other in _peers.keys():
		if other != peer_id and _peers[other]["admitted"] \
				and _peers[other]["player_id"] == admitted_id:
			_peers[other]["admitted"] = false
			_dropping[other] = OS.get_ticks_msec()
			emit_signal("player_disconnected", other, admitted_id)
	_peers[peer_id]["player_id"] = admitted_id
	_peers[peer_id]["admitted"] = true
	_gate.rpc_id(peer_id, "ticket_accepted", admitted_id)
	emit_signal("player_admitted", peer_id, admitted_id)
	if auto_in_progress and not _in_progress_reported and _everyone_admitted():
		report_in_progress()


func _refuse(peer_id: int, reason: String) -> void:
	if _gate != null and _peers.has(peer_id):
		_gate.rpc_id(peer_id, "ticket_refused", reason)
	_dropping[peer_id] = OS.get_ticks_msec() + REFUSE_GRACE_MSEC
	emit_signal("player_refused", peer_id, reason)


func _everyone_admitted() -> bool:
	var admitted := {}
	for info in _peers.values():
		if info["admitted"]:
			admitted[info["player_id"]] = true
	for player in session.get("players", []):
		if not admitted.has(str(player.get("player_id", ""))):
			return false
	return not session.empty()


# lobby HTTP API --------------------------------------------------------------

# POST /v1/servers/register: ready for a match (RegisterGameServer, AVAILABLE).
func register() -> void:
	if _registering:
		return
	_registering = true
	var body := {"server_id": server_id, "connection_info": connection_info}
	if instance_id != "":
		body["instance_id"] = instance_id
	if server_data != "":
		body["data"] = server_data
	_call("POST", "/v1/servers/register", "register", body)


# POST /v1/servers/{id}/heartbeat: health report; the answer names the session.
func heartbeat() -> void:
	if _beating:
		return
	_beating = true
	_call("POST", "/v1/servers/%s/heartbeat" % server_id.percent_encode(), "heartbeat", {})


# POST /v1/servers/{id}/deregister: this server stops taking matches.
func deregister() -> void:
	is_registered = false
	auto_reregister = false
	_call("POST", "/v1/servers/%s/deregister" % server_id.percent_encode(), "deregister", {})


func fetch_session() -> void:
	if _fetching:
		return
	_fetching = true
	_call("GET", "/v1/servers/%s/session" % server_id.percent_encode(), "session")


func report_in_progress() -> void:
	_in_progress_reported = true
	_call("POST", "/v1/sessions/%s/in-progress" % _session_id().percent_encode(), "in-progress")


func report_complete() -> void:
	_call("POST", "/v1/sessions/%s/complete" % _session_id().percent_encode(), "complete")


func _session_id() -> String:
	return str(session.get("session_id", ""))


func _call(method: String, path: String, what: String, body = null) -> void:
	var http := HTTPRequest.new()
	add_child(http)
	http.connect("request_completed", self, "_on_http_done", [http, what])
	var headers := PoolStringArray(["Authorization: Bearer " + server_key])
	var data := ""
	if body != null:
		headers.append("Content-Type: application/json")
		data = JSON.print(body)
	var verb := HTTPClient.METHOD_GET if method == "GET" else HTTPClient.METHOD_POST
	var err := http.request(lobby_url.trim_suffix("/") + path, headers, false, verb, data)
	if err != OK:
		http.queue_free()
		_on_answer(what, 0, {})


func _on_http_done(result: int, status: int, _headers: PoolStringArray,
		body: PoolByteArray, http: HTTPRequest, what: String) -> void:
	http.queue_free()
	var payload := {}
	if result == HTTPRequest.RESULT_SUCCESS:
		var parsed := JSON.parse(body.get_string_from_utf8())
		if parsed.error == OK and typeof(parsed.result) == TYPE_DICTIONARY:
			payload = parsed.result
	else:
		status = 0
	_on_answer(what, status, payload)


func _on_answer(what: String, status: int, payload: Dictionary) -> void:
	var ok: bool = status == 200 and payload.get("ok", false)
	if what == "session":
		_fetching = false
		if ok and typeof(payload.get("session")) == TYPE_DICTIONARY:
			session = payload["session"]
			emit_signal("session_loaded", session)
		# SESSION_NOT_FOUND: no session uses this server, so the ticket is for
		# another one; any other failure says nothing about the ticket.
		var error = payload.get("error")
		var no_session: bool = status == 404 and typeof(error) == TYPE_DICTIONARY \
				and error.get("code") == "SESSION_NOT_FOUND"
		_recheck_waiting(ok or no_session)
	elif what == "in-progress" and not ok:
		_in_progress_reported = false
	elif what == "register":
		_on_registered(status, payload)
	elif what == "heartbeat":
		_on_heartbeat(ok, status, payload)
	elif what == "complete" and ok:
		# The lobby deregistered this server: register again for the next match.
		_end_match()
	emit_signal("reported", what, ok, status)


func _error_code(payload: Dictionary) -> String:
	var error = payload.get("error")
	if typeof(error) == TYPE_DICTIONARY:
		return str(error.get("code", ""))
	return ""


func _on_registered(status: int, payload: Dictionary) -> void:
	_registering = false
	# 409: a live session uses this server (a restart mid-match): it is registered.
	is_registered = status == 200 or (status == 409 and _error_code(payload) == "STATE_CONFLICT")
	if is_registered:
		_next_beat_msec = 0
	elif status == 0 or status >= 500:
		_retry_register_msec = OS.get_ticks_msec() + int(heartbeat_interval * 1000)
	emit_signal("registered", is_registered, status)


func _on_heartbeat(ok: bool, status: int, payload: Dictionary) -> void:
	_beating = false
	if status == 404 and _error_code(payload) == "SERVER_NOT_REGISTERED":
		# Deregistered by the lobby (its session failed, or no health reports).
		if is_registered:
			_end_match()
		return
	if not ok or typeof(payload.get("session")) != TYPE_DICTIONARY:
		return
	var assigned: Dictionary = payload["session"]
	var sid := str(assigned.get("session_id", ""))
	if sid == _assigned_id:
		return
	_assigned_id = sid
	session = assigned
	emit_signal("session_loaded", session)
	emit_signal("session_assigned", session)


func _end_match() -> void:
	is_registered = false
	session = {}
	_assigned_id = ""
	_in_progress_reported = false
	emit_signal("match_ended")
	if auto_reregister:
		register()


func _recheck_waiting(lobby_answered: bool) -> void:
	var waiting: Array = _waiting
	_waiting = []
	for entry in waiting:
		var peer_id: int = entry[0]
		var claims: Dictionary = entry[1]
		if not _peers.has(peer_id) or _peers[peer_id]["admitted"]:
			continue
		if not lobby_answered:
			_refuse(peer_id, "lobby_unavailable")
		elif _serves(claims):
			_admit(peer_id, claims["player_id"])
		elif str(session.get("session_id", "")) != claims["session_id"]:
			_refuse(peer_id, "wrong_session")
		else:
			_refuse(peer_id, "not_a_member")
