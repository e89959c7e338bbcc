class_name LobbyGameServer
extends Node
## The dedicated game server's side of the lobby (clients/godot/API.md).
##
## serve(port) opens an ENet server whose SceneMultiplayer authentication is the
## ticket gate: a connecting peer sends its join ticket (send_auth); the ticket is
## checked offline (LobbyTicket.verify with server_key), then against the session
## this server serves, learnt from GET {lobby_url}/v1/servers/{server_id}/session
## and fetched again when a ticket names another session or a player not in the
## cached list. The peer gets "ok:PLAYER_ID" and is admitted, or "refused:REASON"
## and is dropped. A player admitted again (a client reconnecting before its old link
## timed out) keeps the new link; the old one is dropped. report_in_progress() and
## report_complete() are the lobby's callbacks (POST /v1/sessions/{id}/in-progress
## and /complete, no body).
## Its FleetIQ life goes through the lobby too, with no AWS SDK: register() when
## ready (POST /v1/servers/register), a heartbeat every heartbeat_interval seconds
## (POST /v1/servers/{id}/heartbeat) whose answer names the session to host
## (session_assigned), and after complete (the lobby deregisters the server) or when
## a heartbeat answers SERVER_NOT_REGISTERED (its session failed), register() again
## for the next match (auto_reregister).
## Add the node to the tree before serve(): it uses the tree's `multiplayer`.

signal session_loaded(session: Dictionary)
## The peer's ticket was accepted and its connection completed: RPCs can reach it.
signal player_admitted(peer_id: int, player_id: String)
## reason: malformed, bad_signature, expired, wrong_session, not_a_member, timeout,
## or lobby_unavailable (the session could not be fetched: the client may retry).
signal player_refused(peer_id: int, reason: String)
## An admitted peer is gone: its link dropped, or the same player connected again.
signal player_disconnected(peer_id: int, player_id: String)
## call: "in-progress", "complete" or "session"; status is the HTTP status (0 when
## the request could not be made).
signal reported(call: String, ok: bool, status: int)
## ok: registered (also on 409: a live session uses this server, e.g. after a
## restart mid-match); status is the HTTP status (0: no answer).
signal registered(ok: bool, status: int)
## The heartbeat named a session for this server to host.
signal session_assigned(session: Dictionary)
## The match is over for this server: completed, or its session failed.
signal match_ended()

## By path, not class_name: a dedicated server run headless from a fresh checkout
## has no editor class cache to resolve LobbyTicket from.
const LobbyTicketScript := preload("lobby_ticket.gd")

## Seconds a refused peer stays connected so that the refusal reaches it first.
const REFUSAL_LINGER := 0.5
const HTTP_TIMEOUT := 10.0

## http://host:port of the lobby (its game-server HTTP API).
var lobby_url: String = ""
## The lobby's --server-key (e.g. from OS.get_environment("LOBBY_SERVER_KEY")).
var server_key: String = ""
## This server's FleetIQ game server id.
var server_id: String = ""
## A peer that presents no valid ticket within this many seconds is dropped.
var ticket_timeout := 5.0
## Report in-progress once every member of the session is admitted.
var auto_in_progress := true
## The session this server serves; {} until known.
var session: Dictionary = {}
## FleetIQ registration through the lobby: the EC2 instance id ("i-" and 17
## characters), what players connect to ("ip:port"), optional GameServerData.
var instance_id: String = ""
var connection_info: String = ""
var server_data: String = ""
## Seconds between heartbeats (FleetIQ deregisters a server silent for 60 s).
var heartbeat_interval := 5.0
## Register again after the match (complete, or the session failed).
var auto_reregister := true
var is_registered := false

var _enet: ENetMultiplayerPeer = null
var _scene_mp: SceneMultiplayer = null
## peer_id -> true while its ticket is not answered yet.
var _authenticating := {}
## peer_id -> verified ticket of a peer waiting for a fresh session.
var _awaiting_session := {}
## peer_id -> true: refused by us (its authentication failure is not a timeout).
var _refused := {}
## peer_id -> player_id of every peer whose ticket was accepted.
var _players := {}
## peer_id -> true once the admitted peer's connection completed.
var _connected := {}
var _fetching := false
var _in_progress_sent := false
var _registering := false
var _beating := false
var _next_beat_msec := 0
var _retry_register_msec := -1
var _assigned_id := ""


func _process(_delta: float) -> void:
	var now := Time.get_ticks_msec()
	if is_registered and not _beating and now >= _next_beat_msec:
		_next_beat_msec = now + int(heartbeat_interval * 1000)
		heartbeat()
	if _retry_register_msec >= 0 and now >= _retry_register_msec:
		_retry_register_msec = -1
		register()


## Starts the ENet server on `port` with the ticket gate on. Returns OK or an Error.
## Fetches the session at once when server_id is set and the session is not known.
func serve(port: int, max_clients := 32) -> int:
	if not is_inside_tree():
		return ERR_UNCONFIGURED
	var scene_mp := multiplayer as SceneMultiplayer
	if scene_mp == null:
		return ERR_UNAVAILABLE
	var enet := ENetMultiplayerPeer.new()
	var err := enet.create_server(port, max_clients)
	if err != OK:
		return err
	scene_mp.auth_callback = _on_auth_data
	scene_mp.auth_timeout = ticket_timeout
	_link(scene_mp.peer_authenticating, _on_peer_authenticating)
	_link(scene_mp.peer_authentication_failed, _on_peer_authentication_failed)
	_link(scene_mp.peer_connected, _on_peer_connected)
	_link(scene_mp.peer_disconnected, _on_peer_disconnected)
	scene_mp.multiplayer_peer = enet
	_enet = enet
	_scene_mp = scene_mp
	if server_id != "" and session.is_empty():
		fetch_session()
	return OK


## Offline check with server_key: {ok, session_id, player_id, expires_at, error}.
func verify_ticket(ticket: String) -> Dictionary:
	return LobbyTicketScript.verify(ticket, server_key, Time.get_unix_time_from_system())


## GET {lobby_url}/v1/servers/{server_id}/session; emits session_loaded when it
## knows a session, and reported("session", ok, status) in any case.
func fetch_session() -> void:
	if _fetching:
		return  # the answer under way serves this call too
	if server_id == "" or lobby_url == "":
		_on_http_result("session", false, 0, {})
		return
	_fetching = true
	_http(HTTPClient.METHOD_GET, "/v1/servers/%s/session" % server_id.uri_encode(), "session")


## POST {lobby_url}/v1/sessions/{id}/in-progress: the match runs.
func report_in_progress() -> void:
	var sid := _text(session, "session_id")
	if sid == "":
		reported.emit("in-progress", false, 0)
		return
	_in_progress_sent = true
	_http(HTTPClient.METHOD_POST, "/v1/sessions/%s/in-progress" % sid.uri_encode(), "in-progress")


## POST {lobby_url}/v1/sessions/{id}/complete: the match is over.
func report_complete() -> void:
	var sid := _text(session, "session_id")
	if sid == "":
		reported.emit("complete", false, 0)
		return
	_http(HTTPClient.METHOD_POST, "/v1/sessions/%s/complete" % sid.uri_encode(), "complete")


## POST /v1/servers/register: ready for a match (RegisterGameServer, AVAILABLE).
func register() -> void:
	if _registering:
		return
	_registering = true
	var body := {"server_id": server_id, "connection_info": connection_info}
	if instance_id != "":
		body["instance_id"] = instance_id
	if server_data != "":
		body["data"] = server_data
	_http(HTTPClient.METHOD_POST, "/v1/servers/register", "register", body)


## POST /v1/servers/{id}/heartbeat: health report; the answer names the session.
func heartbeat() -> void:
	if _beating:
		return
	_beating = true
	_http(HTTPClient.METHOD_POST, "/v1/servers/%s/heartbeat" % server_id.uri_encode(),
		"heartbeat", {})


## POST /v1/servers/{id}/deregister: this server stops taking matches.
func deregister() -> void:
	is_registered = false
	auto_reregister = false
	_http(HTTPClient.METHOD_POST, "/v1/servers/%s/deregister" % server_id.uri_encode(),
		"deregister", {})


## Whether the peer's ticket was accepted and its connection completed.
func is_admitted(peer_id: int) -> bool:
	return _connected.has(peer_id)


## The player id of an admitted peer (e.g. multiplayer.get_remote_sender_id()), or "".
func player_of(peer_id: int) -> String:
	return str(_players[peer_id]) if is_admitted(peer_id) else ""


# --- the ticket gate ----------------------------------------------------------


func _on_peer_authenticating(peer_id: int) -> void:
	_authenticating[peer_id] = true


## The peer's authentication data: its ticket. One ticket per peer is looked at.
func _on_auth_data(peer_id: int, data: PackedByteArray) -> void:
	if not _authenticating.has(peer_id) or _awaiting_session.has(peer_id):
		return
	var check := verify_ticket(data.get_string_from_utf8())
	if check["ok"] != true:
		_refuse(peer_id, str(check["error"]))
		return
	_decide(peer_id, check, true)


## Admits, refuses, or (with may_fetch) first refreshes the session.
func _decide(peer_id: int, check: Dictionary, may_fetch: bool) -> void:
	var player_id := str(check["player_id"])
	var reason := ""
	if session.is_empty() or _text(session, "session_id") != str(check["session_id"]):
		reason = "wrong_session"
	elif not _member_ids().has(player_id):
		reason = "not_a_member"
	if reason == "":
		_admit(peer_id, player_id)
	elif may_fetch:
		_awaiting_session[peer_id] = check
		fetch_session()
	else:
		_refuse(peer_id, reason)


func _admit(peer_id: int, player_id: String) -> void:
	for other in _players.keys():
		if other != peer_id and _players[other] == player_id:
			_replaced(other, player_id)
	_authenticating.erase(peer_id)
	_players[peer_id] = player_id
	_scene_mp.send_auth(peer_id, ("ok:" + player_id).to_utf8_buffer())
	_scene_mp.complete_auth(peer_id)


## The player came back on a new link before its old one timed out: the new one wins.
func _replaced(old_peer: int, player_id: String) -> void:
	var was_connected := _connected.has(old_peer)
	_players.erase(old_peer)
	_connected.erase(old_peer)
	if was_connected:
		player_disconnected.emit(old_peer, player_id)
	_drop_peer.call_deferred(old_peer)


func _refuse(peer_id: int, reason: String) -> void:
	_authenticating.erase(peer_id)
	_awaiting_session.erase(peer_id)
	_refused[peer_id] = true
	_scene_mp.send_auth(peer_id, ("refused:" + reason).to_utf8_buffer())
	player_refused.emit(peer_id, reason)
	# Disconnecting now would drop the queued refusal: give it time to leave.
	get_tree().create_timer(REFUSAL_LINGER).timeout.connect(_drop_peer.bind(peer_id))


func _drop_peer(peer_id: int) -> void:
	_refused.erase(peer_id)
	if _scene_mp == null or _scene_mp.multiplayer_peer != _enet:
		return
	if _scene_mp.get_authenticating_peers().has(peer_id) or _scene_mp.get_peers().has(peer_id):
		_scene_mp.disconnect_peer(peer_id)


func _on_peer_authentication_failed(peer_id: int) -> void:
	_awaiting_session.erase(peer_id)
	_players.erase(peer_id)  # accepted, but gone before its side completed
	if _refused.has(peer_id):
		_refused.erase(peer_id)
	elif _authenticating.has(peer_id):
		_authenticating.erase(peer_id)
		player_refused.emit(peer_id, "timeout")


func _on_peer_connected(peer_id: int) -> void:
	if not _players.has(peer_id):
		return
	_connected[peer_id] = true
	player_admitted.emit(peer_id, _players[peer_id])
	_maybe_report_in_progress()


func _on_peer_disconnected(peer_id: int) -> void:
	_connected.erase(peer_id)
	if _players.has(peer_id):
		var player_id: String = _players[peer_id]
		_players.erase(peer_id)
		player_disconnected.emit(peer_id, player_id)


func _maybe_report_in_progress() -> void:
	if not auto_in_progress or _in_progress_sent:
		return
	if _text(session, "session_state") != "CONNECTING":
		return
	var present := []
	for peer_id in _connected:
		present.append(_players.get(peer_id, ""))
	var members := _member_ids()
	if members.is_empty():
		return
	for player_id in members:
		if not present.has(player_id):
			return
	report_in_progress()


## The session's member ids: players[].player_id, else connected_players.
func _member_ids() -> Array:
	var ids := []
	var players: Variant = session.get("players")
	if players is Array:
		for entry in players:
			if entry is Dictionary:
				ids.append(_text(entry, "player_id"))
	var connected_players: Variant = session.get("connected_players")
	if ids.is_empty() and connected_players is Array:
		for player_id in connected_players:
			ids.append(str(player_id))
	return ids


# --- the lobby's game-server HTTP API -------------------------------------------


func _http(method: int, path: String, call_name: String, body: Variant = null) -> void:
	var http := HTTPRequest.new()
	http.timeout = HTTP_TIMEOUT
	add_child(http)
	http.request_completed.connect(_on_http_done.bind(http, call_name))
	var headers := PackedStringArray(["Authorization: Bearer " + server_key])
	var data := ""
	if body != null:
		headers.append("Content-Type: application/json")
		data = JSON.stringify(body)
	var err := http.request(lobby_url.trim_suffix("/") + path, headers, method, data)
	if err != OK:
		http.queue_free()
		_on_http_result(call_name, false, 0, {})


func _on_http_done(
	result: int,
	status: int,
	_headers: PackedStringArray,
	body: PackedByteArray,
	http: HTTPRequest,
	call_name: String
) -> void:
	http.queue_free()
	var ok := result == HTTPRequest.RESULT_SUCCESS and status >= 200 and status < 300
	var reply := {}
	if body.size() > 0 and body[0] == 123:  # "{": a JSON object
		var parsed: Variant = JSON.parse_string(body.get_string_from_utf8())
		if parsed is Dictionary:
			reply = parsed
	_on_http_result(call_name, ok, status, reply)


func _on_http_result(call_name: String, ok: bool, status: int, reply: Dictionary) -> void:
	# Replies are {"ok": true, "session": {...}}; a bare session object is taken too.
	var raw: Variant = reply.get("session", reply if reply.has("session_id") else null)
	var snapshot: Dictionary = raw if raw is Dictionary else {}
	match call_name:
		"session":
			_fetching = false
			# SESSION_NOT_FOUND: no live session uses this server, so a ticket naming
			# one is for another server; any other failure says nothing about tickets.
			var raw_error: Variant = reply.get("error")
			var no_session := status == 404 and raw_error is Dictionary \
				and _text(raw_error, "code") == "SESSION_NOT_FOUND"
			if ok or no_session:
				_set_session(snapshot)
			reported.emit(call_name, ok, status)
			_resolve_waiting(ok or no_session)
		"in-progress":
			if not ok:
				_in_progress_sent = false  # the next admission tries again
			elif not snapshot.is_empty():
				session = snapshot
			reported.emit(call_name, ok, status)
		"register":
			_on_registered(status, reply)
			reported.emit(call_name, is_registered, status)
		"heartbeat":
			_on_heartbeat(ok, status, reply)
			reported.emit(call_name, ok, status)
		"complete":
			reported.emit(call_name, ok, status)
			if ok:
				# The lobby deregistered this server: register again for the next match.
				_end_match()
		_:
			if ok and not snapshot.is_empty():
				session = snapshot
			reported.emit(call_name, ok, status)


func _error_code(reply: Dictionary) -> String:
	var raw_error: Variant = reply.get("error")
	return _text(raw_error, "code") if raw_error is Dictionary else ""


func _on_registered(status: int, reply: Dictionary) -> void:
	_registering = false
	# 409: a live session uses this server (a restart mid-match): it is registered.
	is_registered = status == 200 or (status == 409 and _error_code(reply) == "STATE_CONFLICT")
	if is_registered:
		_next_beat_msec = 0
	elif status == 0 or status >= 500:
		_retry_register_msec = Time.get_ticks_msec() + int(heartbeat_interval * 1000)
	registered.emit(is_registered, status)


func _on_heartbeat(ok: bool, status: int, reply: Dictionary) -> void:
	_beating = false
	if status == 404 and _error_code(reply) == "SERVER_NOT_REGISTERED":
		# Deregistered by the lobby (its session failed, or no health reports).
		if is_registered:
			_end_match()
		return
	var raw: Variant = reply.get("session")
	if not ok or not raw is Dictionary:
		return
	var assigned: Dictionary = raw
	var sid := _text(assigned, "session_id")
	if sid == _assigned_id:
		return
	_assigned_id = sid
	_set_session(assigned)
	session_assigned.emit(session)


func _end_match() -> void:
	is_registered = false
	session = {}
	_assigned_id = ""
	_in_progress_sent = false
	match_ended.emit()
	if auto_reregister:
		register()


func _set_session(snapshot: Dictionary) -> void:
	if _text(snapshot, "session_id") != _text(session, "session_id"):
		_in_progress_sent = _text(snapshot, "session_state") == "IN_PROGRESS"
	session = snapshot
	if not session.is_empty():
		session_loaded.emit(session)


## Judges the tickets that waited for the session, without fetching again; when the
## lobby gave no answer, they are refused as lobby_unavailable (the client retries).
func _resolve_waiting(lobby_answered: bool) -> void:
	var waiting := _awaiting_session
	_awaiting_session = {}
	for peer_id in waiting:
		if not _authenticating.has(peer_id):
			continue
		if lobby_answered:
			_decide(peer_id, waiting[peer_id], false)
		else:
			_refuse(peer_id, "lobby_unavailable")


static func _link(sig: Signal, callback: Callable) -> void:
	if not sig.is_connected(callback):
		sig.connect(callback)


static func _text(data: Dictionary, key: String) -> String:
	var value: Variant = data.get(key)
	if value == null:
		return ""
	return str(value)
