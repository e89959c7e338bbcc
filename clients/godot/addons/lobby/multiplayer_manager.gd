extends Node
## Joins the session's game server, meant as the autoload `MultiplayerManager`
## (clients/godot/API.md).
##
## On SessionManager.session_started (when auto_connect is on), and on a resume into
## a started session, join_game() asks the lobby for a join ticket, connects an
## ENetMultiplayerPeer client to the ticket's server_endpoint ("host:port", IPv6 as
## "[::1]:6060"), sets it as multiplayer.multiplayer_peer and presents the ticket
## through SceneMultiplayer's authentication (send_auth). The game server answers
## "ok:PLAYER_ID" (game_connected) or "refused:REASON".
## When the ENet link drops while the session lives, it asks the lobby again (the
## ticket reply carries the current endpoint; while the lobby socket is itself
## reconnecting it waits for that first) and reconnects with backoff. Once the
## session has ended it stops with gave_up("session_closed").

signal game_connecting(endpoint: String)
## The ticket was accepted; the game can start sending RPCs.
signal game_connected(player_id: String)
## One attempt failed: "timeout", "refused:REASON", "lobby:CODE" (join_ticket's
## error), "connection_failed", ...
signal game_connection_failed(reason: String)
## The ENet link dropped (a reconnect follows while the session lives).
signal game_disconnected()
signal game_reconnecting(attempt: int)
## No more attempts: "session_closed", "attempts_exhausted", "refused:REASON", or
## "lobby:CODE" when the lobby will not give a ticket (e.g. TICKETS_DISABLED).
signal gave_up(reason: String)

## By path, not class_name: see session_manager.gd.
const LobbyRequestScript := preload("lobby_request.gd")

const RETRY_BASE_DELAY := 0.5
const RETRY_MAX_DELAY := 8.0
## Refusals a fresh ticket may cure (a ticket that aged, a server that could not
## reach the lobby, a stale link still counted); any other refusal (malformed,
## bad_signature, wrong_session, not_a_member) ends the attempts at once.
const RETRYABLE_REFUSALS := ["expired", "timeout", "lobby_unavailable", "duplicate"]
const LIVE_STATES := ["CONNECTING", "IN_PROGRESS"]
## join_ticket errors that mean the player's session is gone.
const SESSION_GONE_CODES := ["NOT_IN_SESSION", "SESSION_NOT_FOUND"]
## join_ticket errors that may clear up by themselves; any other (TICKETS_DISABLED,
## BAD_REQUEST from a lobby without tickets, ...) ends the attempts.
const RETRYABLE_LOBBY_CODES := [
	"RATE_LIMITED", "INTERNAL", "SESSION_NOT_STARTED", "NOT_CONNECTED", "DISCONNECTED", "TIMEOUT"
]

## The SessionManager to follow; default /root/SessionManager.
var session_manager: Node = null:
	set = _set_session_manager
## Join the game server on session_started, and on a resume into a started session.
var auto_connect := true
## Seconds for the ENet connect plus the ticket's answer.
var connect_timeout := 10.0
var max_reconnect_attempts := 5
## The ENet client peer while connecting or connected, else null.
var peer: ENetMultiplayerPeer = null

## "idle", "ticket", "waiting_lobby", "connecting", "connected" or "backoff".
var _phase := "idle"
var _active := false
var _attempt := 0
## Bumped whenever an attempt ends: late callbacks of an older attempt are ignored.
var _serial := 0
var _deadline_msec := 0
var _retry_at_msec := 0
var _ticket := ""
var _game_player_id := ""
var _left_session_id := ""
var _auth_owner: SceneMultiplayer = null


func _ready() -> void:
	process_mode = Node.PROCESS_MODE_ALWAYS
	if session_manager == null:
		session_manager = get_node_or_null("/root/SessionManager")


func _process(_delta: float) -> void:
	var now := Time.get_ticks_msec()
	if _phase == "connecting" and now >= _deadline_msec:
		_attempt_failed("timeout")
	elif _phase == "backoff" and now >= _retry_at_msec:
		_start_attempt()


## join_ticket -> parse the endpoint -> ENet client -> present the ticket.
## Does nothing while an attempt is under way or the game is connected.
func join_game() -> void:
	if _active and _phase != "idle":
		return
	_active = true
	_left_session_id = ""
	_attempt = 0
	_start_attempt()


## Closes the ENet link and stops reconnecting (no signal).
func leave_game() -> void:
	if session_manager != null:
		_left_session_id = str(session_manager.session.get("session_id", ""))
	_active = false
	_serial += 1
	_phase = "idle"
	_close_peer()


## ["127.0.0.1", 6060] for "127.0.0.1:6060", ["::1", 6060] for "[::1]:6060";
## [] when the endpoint is not host:port with a port in 1..65535.
static func parse_endpoint(endpoint: String) -> Array:
	var text := endpoint.strip_edges()
	var host := ""
	var port_text := ""
	if text.begins_with("["):
		var close := text.find("]")
		if close < 0 or text.substr(close + 1, 1) != ":":
			return []
		host = text.substr(1, close - 1)
		port_text = text.substr(close + 2)
	else:
		var colon := text.rfind(":")
		if colon < 0:
			return []
		host = text.substr(0, colon)
		port_text = text.substr(colon + 1)
		if host.find(":") >= 0:
			return []  # an IPv6 address without brackets: where does the port start?
	if host.is_empty() or not port_text.is_valid_int():
		return []
	var port := port_text.to_int()
	if port < 1 or port > 65535:
		return []
	return [host, port]


# --- attempts ---------------------------------------------------------------


func _start_attempt() -> void:
	_serial += 1
	_close_peer()
	if session_manager == null:
		game_connection_failed.emit("no_session_manager")
		_give_up("attempts_exhausted")
		return
	var lobby_state: String = session_manager.connection_state
	if lobby_state == "reconnecting" or lobby_state == "connecting":
		_phase = "waiting_lobby"  # resumed by SessionManager.authenticated
		return
	_phase = "ticket"
	var req: LobbyRequestScript = session_manager.join_ticket()
	# Bind the serial only: a request bound into its own signal would never be freed.
	req.completed.connect(_on_ticket.bind(_serial))


func _on_ticket(reply: Dictionary, serial: int) -> void:
	if serial != _serial or _phase != "ticket":
		return
	if reply.get("ok", false) != true:
		var raw_error: Variant = reply.get("error")
		var code := _text(raw_error if raw_error is Dictionary else {}, "code")
		if code in SESSION_GONE_CODES:
			_give_up("session_closed")
		elif session_manager.connection_state == "reconnecting":
			_phase = "waiting_lobby"  # ask again once the lobby socket has resumed
		elif code in RETRYABLE_LOBBY_CODES:
			_attempt_failed("lobby:" + code)
		else:
			game_connection_failed.emit("lobby:" + code)
			_give_up("lobby:" + code)
		return
	_ticket = _text(reply, "ticket")
	var endpoint := _text(reply, "server_endpoint")
	if endpoint == "":
		endpoint = session_manager.server_endpoint()
	var target := parse_endpoint(endpoint)
	if _ticket == "" or target.is_empty():
		_attempt_failed("bad_ticket_reply")
		return
	var scene_mp := multiplayer as SceneMultiplayer
	if scene_mp == null:
		game_connection_failed.emit("no_scene_multiplayer")
		_give_up("attempts_exhausted")
		return
	var enet := ENetMultiplayerPeer.new()
	var err := enet.create_client(target[0], target[1])
	if err != OK:
		_attempt_failed("enet_error:%d" % err)
		return
	_watch(scene_mp)
	scene_mp.auth_callback = _on_auth_data
	scene_mp.auth_timeout = connect_timeout
	_auth_owner = scene_mp
	peer = enet
	_game_player_id = ""
	_phase = "connecting"
	_deadline_msec = Time.get_ticks_msec() + int(connect_timeout * 1000.0)
	scene_mp.multiplayer_peer = enet
	game_connecting.emit(endpoint)


func _attempt_failed(reason: String) -> void:
	_serial += 1
	_close_peer()
	if not _active:
		_phase = "idle"
		return
	game_connection_failed.emit(reason)
	if not _session_live():
		_give_up("session_closed")
		return
	_schedule_retry()


func _schedule_retry() -> void:
	_attempt += 1
	if _attempt > max_reconnect_attempts:
		_give_up("attempts_exhausted")
		return
	var delay := minf(RETRY_MAX_DELAY, RETRY_BASE_DELAY * pow(2.0, _attempt - 1))
	delay *= randf_range(0.5, 1.0)
	_retry_at_msec = Time.get_ticks_msec() + int(delay * 1000.0)
	_phase = "backoff"
	game_reconnecting.emit(_attempt)


func _give_up(reason: String) -> void:
	_serial += 1
	_close_peer()
	_active = false
	_phase = "idle"
	gave_up.emit(reason)


func _close_peer() -> void:
	if _auth_owner != null:
		if peer != null and _auth_owner.multiplayer_peer == peer:
			_auth_owner.multiplayer_peer = OfflineMultiplayerPeer.new()
		_auth_owner.auth_callback = Callable()
		_auth_owner = null
	if peer != null:
		peer.close()
		peer = null


func _session_live() -> bool:
	if session_manager == null or not session_manager.in_session():
		return false
	return session_manager.session_state() in LIVE_STATES


# --- SceneMultiplayer -------------------------------------------------------
# Its signals and the auth callback run inside SceneMultiplayer.poll(): whatever
# replaces or closes the peer is deferred to after it.


func _watch(scene_mp: SceneMultiplayer) -> void:
	_link(scene_mp.peer_authenticating, _on_peer_authenticating)
	_link(scene_mp.peer_authentication_failed, _on_peer_authentication_failed)
	_link(scene_mp.connected_to_server, _on_connected_to_server)
	_link(scene_mp.connection_failed, _on_connection_failed)
	_link(scene_mp.server_disconnected, _on_server_disconnected)


func _on_peer_authenticating(id: int) -> void:
	if id == 1 and _phase == "connecting" and _auth_owner != null:
		_auth_owner.send_auth(1, _ticket.to_utf8_buffer())


func _on_auth_data(id: int, data: PackedByteArray) -> void:
	if id != 1 or _phase != "connecting" or _auth_owner == null:
		return
	var answer := data.get_string_from_utf8()
	if answer.begins_with("ok:"):
		_game_player_id = answer.substr(3)
		_auth_owner.complete_auth(1)
	elif answer.begins_with("refused:"):
		_on_refused.call_deferred(answer.substr(8), _serial)
	else:
		_fail_attempt.call_deferred("bad_auth_answer", _serial)


func _on_refused(reason: String, serial: int) -> void:
	if serial != _serial or _phase != "connecting":
		return
	var why := "refused:" + reason
	if reason in RETRYABLE_REFUSALS:
		_attempt_failed(why)
		return
	_close_peer()
	game_connection_failed.emit(why)
	_give_up(why)


func _on_connected_to_server() -> void:
	if _phase != "connecting":
		return
	_phase = "connected"
	_attempt = 0
	var id := _game_player_id
	if id == "" and session_manager != null:
		id = session_manager.player_id
	game_connected.emit(id)


func _on_peer_authentication_failed(id: int) -> void:
	if id == 1 and _phase == "connecting":
		_fail_attempt.call_deferred("auth_failed", _serial)


func _on_connection_failed() -> void:
	if _phase == "connecting":
		_fail_attempt.call_deferred("connection_failed", _serial)


func _on_server_disconnected() -> void:
	if _phase == "connecting":
		_fail_attempt.call_deferred("disconnected", _serial)
	elif _phase == "connected":
		_link_dropped.call_deferred(_serial)


func _fail_attempt(reason: String, serial: int) -> void:
	if serial == _serial and _phase == "connecting":
		_attempt_failed(reason)


func _link_dropped(serial: int) -> void:
	if serial != _serial or _phase != "connected":
		return
	_serial += 1
	_close_peer()
	_phase = "idle"
	game_disconnected.emit()
	if not _active:
		return
	if not _session_live():
		_give_up("session_closed")
		return
	_attempt = 0
	_schedule_retry()


# --- SessionManager ---------------------------------------------------------


func _set_session_manager(value: Node) -> void:
	if value == session_manager:
		return
	if session_manager != null:
		_wire(session_manager, false)
	session_manager = value
	if session_manager != null:
		_wire(session_manager, true)


func _wire(manager: Node, on: bool) -> void:
	var links := {
		"session_started": _on_session_started,
		"session_closed": _on_session_closed,
		"kicked": _on_kicked,
		"authenticated": _on_authenticated,
		"disconnected": _on_lobby_disconnected,
	}
	for signal_name in links:
		var callback: Callable = links[signal_name]
		if on and not manager.is_connected(signal_name, callback):
			manager.connect(signal_name, callback)
		elif not on and manager.is_connected(signal_name, callback):
			manager.disconnect(signal_name, callback)


func _on_session_started(_server_endpoint: String, _server_id: String) -> void:
	if auto_connect:
		join_game()


func _on_authenticated(_player_id: String, resumed: bool) -> void:
	if _phase == "waiting_lobby":
		_start_attempt()
	elif resumed and auto_connect and not _active and _session_live():
		if str(session_manager.session.get("session_id", "")) != _left_session_id:
			join_game()


func _on_session_closed(_reason: String) -> void:
	_session_ended()


func _on_kicked() -> void:
	_session_ended()


## The lobby ended the session (completed, expired, ...): the match is over, so the
## link is closed too, as in the Godot 3 edition.
func _session_ended() -> void:
	if _active:
		_give_up("session_closed")


func _on_lobby_disconnected(_code: int, _reason: String) -> void:
	if _phase == "waiting_lobby":
		_attempt_failed("lobby_disconnected")


static func _link(sig: Signal, callback: Callable) -> void:
	if not sig.is_connected(callback):
		sig.connect(callback)


static func _text(data: Dictionary, key: String) -> String:
	var value: Variant = data.get(key)
	if value == null:
		return ""
	return str(value)
