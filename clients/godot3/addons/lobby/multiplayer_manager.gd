# MultiplayerManager (autoload): connects ENet to the game server the session
# hands out, presents the player's join ticket, and reconnects (asking the lobby
# for the endpoint again) when the link drops while the session lives.
# Godot 3 edition; the Godot 4 one (clients/godot) has the same API.
extends Node

signal game_connecting(endpoint)
signal game_connected(player_id)
signal game_connection_failed(reason)
signal game_disconnected()
signal game_reconnecting(attempt)
signal gave_up(reason)

const TicketGateScript = preload("ticket_gate.gd")
# Ticket refusals that a fresh ticket can mend; any other refusal is final.
const RETRYABLE_REFUSALS := ["expired", "timeout", "lobby_unavailable"]
const LOBBY_UNREACHABLE := ["NOT_CONNECTED", "DISCONNECTED", "TIMEOUT"]
# Lobby answers that may change on their own; others (TICKETS_DISABLED, ...) won't.
const RETRYABLE_LOBBY_ERRORS := ["RATE_LIMITED", "INTERNAL", "SESSION_NOT_STARTED"]

var session_manager: Node = null
var auto_connect := true
var connect_timeout := 10.0
var max_reconnect_attempts := 5
var reconnect_base_delay := 0.5
var reconnect_max_delay := 8.0
var peer: NetworkedMultiplayerENet = null
var player_id := ""

# idle, ticket, connecting, presenting, connected, retry_wait, lobby_wait
var _state := "idle"
var _attempt := 0
var _deadline_msec := 0
var _retry_at_msec := 0
var _ticket := ""
var _gate: Node = null
var _rng := RandomNumberGenerator.new()


func _ready() -> void:
	_rng.randomize()
	if session_manager == null:
		session_manager = get_node_or_null("/root/SessionManager")
	if session_manager == null:
		push_error("MultiplayerManager: no SessionManager (set session_manager or add the autoload)")
		return
	session_manager.connect("session_started", self, "_on_session_started")
	session_manager.connect("session_closed", self, "_on_session_over")
	session_manager.connect("kicked", self, "_on_kicked")
	session_manager.connect("authenticated", self, "_on_lobby_authenticated")
	_gate = TicketGateScript.ensure(get_tree(), TicketGateScript)
	_gate.connect("accepted", self, "_on_ticket_accepted")
	_gate.connect("refused", self, "_on_ticket_refused")


func _process(_delta: float) -> void:
	var now := OS.get_ticks_msec()
	if (_state == "connecting" or _state == "presenting") and now >= _deadline_msec:
		_attempt_failed("timeout")
	elif _state == "retry_wait" and now >= _retry_at_msec:
		_request_ticket()


# Parses "host:port" and "[v6 host]:port"; [] when it is neither.
static func parse_endpoint(endpoint: String) -> Array:
	var host := ""
	var port_text := ""
	if endpoint.begins_with("["):
		var close := endpoint.find("]:")
		if close < 0:
			return []
		host = endpoint.substr(1, close - 1)
		port_text = endpoint.substr(close + 2, endpoint.length())
	else:
		var colon := endpoint.find_last(":")
		if colon <= 0 or endpoint.find(":") != colon:
			return []
		host = endpoint.substr(0, colon)
		port_text = endpoint.substr(colon + 1, endpoint.length())
	if host.empty() or not port_text.is_valid_integer():
		return []
	var port := int(port_text)
	if port < 1 or port > 65535:
		return []
	return [host, port]


func join_game() -> void:
	_attempt = 0
	_request_ticket()


func leave_game() -> void:
	_close_peer()
	_state = "idle"


func _on_session_started(_endpoint: String, _server_id: String) -> void:
	if auto_connect:
		join_game()


# After every hello answered: a resume after a dropped socket, or the first
# hello of a restarted game that resumed straight into a started session.
func _on_lobby_authenticated(_player_id: String, _resumed: bool) -> void:
	if _state == "lobby_wait":
		_request_ticket()
	elif _state == "idle" and auto_connect and session_manager.server_endpoint() != "":
		join_game()


func _on_session_over(reason: String) -> void:
	if _state != "idle":
		_give_up("session_closed")
	elif reason == "lost":
		_close_peer()


func _on_kicked() -> void:
	if _state != "idle":
		_give_up("session_closed")


# The ticket comes with the session's current endpoint, so asking for one is
# also how a reconnect learns where the game server is now.
func _request_ticket() -> void:
	_state = "ticket"
	var req = session_manager.join_ticket()
	req.connect("completed", self, "_on_ticket_reply", [], CONNECT_ONESHOT)


func _on_ticket_reply(reply: Dictionary) -> void:
	if _state != "ticket":
		return
	if not reply.get("ok", false):
		var code := str(reply.get("error", {}).get("code", ""))
		if code in LOBBY_UNREACHABLE and session_manager.connection_state != "online":
			# The SessionManager reconnects and resumes; ask again after that.
			_state = "lobby_wait"
			emit_signal("game_connection_failed", "lobby:" + code)
		elif code in ["NOT_IN_SESSION", "SESSION_NOT_FOUND"]:
			_give_up("session_closed")
		elif code in RETRYABLE_LOBBY_ERRORS or code in LOBBY_UNREACHABLE:
			_attempt_failed("lobby:" + code)
		else:
			_give_up("lobby:" + code)
		return
	var endpoint := str(reply.get("server_endpoint", ""))
	var address := parse_endpoint(endpoint)
	if address.empty():
		_give_up("bad_endpoint:" + endpoint)
		return
	_ticket = str(reply.get("ticket", ""))
	_close_peer()
	peer = NetworkedMultiplayerENet.new()
	var err := peer.create_client(address[0], address[1])
	if err != OK:
		peer = null
		_attempt_failed("enet_error:%d" % err)
		return
	peer.connect("connection_succeeded", self, "_on_enet_connected")
	peer.connect("connection_failed", self, "_on_enet_failed")
	peer.connect("server_disconnected", self, "_on_enet_dropped")
	get_tree().network_peer = peer
	_state = "connecting"
	_deadline_msec = OS.get_ticks_msec() + int(connect_timeout * 1000)
	emit_signal("game_connecting", endpoint)


func _on_enet_connected() -> void:
	if _state != "connecting":
		return
	_state = "presenting"
	_gate.rpc_id(1, "present_ticket", _ticket)


func _on_enet_failed() -> void:
	if _state == "connecting":
		_attempt_failed("connect_failed")


func _on_ticket_accepted(admitted_as: String) -> void:
	if _state != "presenting":
		return
	player_id = admitted_as
	_state = "connected"
	_attempt = 0
	emit_signal("game_connected", player_id)


func _on_ticket_refused(reason: String) -> void:
	if _state != "presenting":
		return
	if reason in RETRYABLE_REFUSALS:
		_attempt_failed("refused:" + reason)
	else:
		_give_up("refused:" + reason)


func _on_enet_dropped() -> void:
	var was_connected := _state == "connected"
	if was_connected:
		emit_signal("game_disconnected")
	if _state != "idle":
		_attempt_failed("server_disconnected")


func _attempt_failed(reason: String) -> void:
	_close_peer()
	emit_signal("game_connection_failed", reason)
	if not session_manager.in_session():
		_give_up("session_closed")
		return
	_attempt += 1
	if _attempt > max_reconnect_attempts:
		_give_up("attempts_exhausted")
		return
	var ceiling := min(reconnect_max_delay, reconnect_base_delay * pow(2, _attempt - 1))
	_retry_at_msec = OS.get_ticks_msec() + int(ceiling * _rng.randf_range(0.5, 1.0) * 1000)
	_state = "retry_wait"
	emit_signal("game_reconnecting", _attempt)


func _give_up(reason: String) -> void:
	_close_peer()
	_state = "idle"
	emit_signal("gave_up", reason)


func _close_peer() -> void:
	if peer == null:
		return
	# Disconnected first: closing makes the peer report its own drop.
	for sig in ["connection_succeeded", "connection_failed", "server_disconnected"]:
		for conn in peer.get_signal_connection_list(sig):
			if conn["target"] == self:
				peer.disconnect(sig, self, conn["method"])
	peer.close_connection()
	if get_tree().network_peer == peer:
		get_tree().network_peer = null
	peer = null
