extends Control
## Waiting room: the live member list (host and oneself marked), Start and Kick for
## the host, Leave, the session state and, once started, the game server.
## refresh() redraws everything from SessionManager.session; it runs on every
## session_changed. Emits game_starting(server_endpoint) on session_started (the
## MultiplayerManager autoload connects by itself), and left() once this player is
## out of the session: Leave answered, kicked, or the session closed.

signal left()
signal game_starting(server_endpoint: String)

## By path, not class_name: see session_manager.gd.
const LobbyRequestScript := preload("../lobby_request.gd")

## The SessionManager to use; default /root/SessionManager (set it before the scene
## enters the tree to use another).
var session_manager: Node = null

var _starting := false

@onready var _title: Label = $Box/Title
@onready var _member_list: ItemList = $Box/MemberList
@onready var _start_button: Button = $Box/Buttons/StartButton
@onready var _kick_button: Button = $Box/Buttons/KickButton
@onready var _leave_button: Button = $Box/Buttons/LeaveButton
@onready var _status_label: Label = $Box/StatusLabel
@onready var _error_label: Label = $Box/ErrorLabel


func _ready() -> void:
	if session_manager == null:
		session_manager = get_node_or_null("/root/SessionManager")
	_error_label.text = ""
	_start_button.pressed.connect(_on_start_pressed)
	_kick_button.pressed.connect(_on_kick_pressed)
	_leave_button.pressed.connect(_on_leave_pressed)
	if session_manager != null:
		session_manager.session_changed.connect(_on_session_changed)
		session_manager.session_started.connect(_on_session_started)
		session_manager.session_start_failed.connect(_on_session_start_failed)
		session_manager.session_closed.connect(_on_session_closed)
		session_manager.kicked.connect(_on_kicked)
	refresh()


## Redraws the room from SessionManager.session.
func refresh() -> void:
	if session_manager == null:
		_error_label.text = "No SessionManager: enable the Lobby plugin."
		return
	var current: Dictionary = session_manager.session
	var host_id := _text(current, "host_id")
	var me: String = session_manager.player_id
	_title.text = _text(current, "name")
	_member_list.clear()
	for member in session_manager.members():
		if not (member is Dictionary):
			continue
		var player_id := _text(member, "player_id")
		var line := _text(member, "name")
		if player_id == host_id:
			line += " (host)"
		if player_id == me:
			line += " (you)"
		var index := _member_list.add_item(line)
		_member_list.set_item_metadata(index, player_id)
	var state := _text(current, "session_state")
	var host: bool = session_manager.is_host()
	_start_button.visible = host
	_kick_button.visible = host
	_start_button.disabled = _starting or state != "WAITING"
	_kick_button.disabled = state != "WAITING"
	var endpoint := _text(current, "server_endpoint")
	_status_label.text = state if endpoint == "" else "%s, server %s" % [state, endpoint]


func _on_session_changed(_session: Dictionary) -> void:
	refresh()


func _on_start_pressed() -> void:
	_error_label.text = ""
	_starting = true
	_start_button.disabled = true
	var req: LobbyRequestScript = session_manager.start_session()
	req.completed.connect(_on_start_reply)


func _on_start_reply(reply: Dictionary) -> void:
	_starting = false
	if reply.get("ok", false) != true:
		_error_label.text = "Could not start: " + _describe(reply)
	refresh()


func _on_kick_pressed() -> void:
	var selected := _member_list.get_selected_items()
	if selected.is_empty():
		_error_label.text = "Pick a player to kick."
		return
	var player_id := str(_member_list.get_item_metadata(selected[0]))
	if player_id == session_manager.player_id:
		_error_label.text = "You cannot kick yourself."
		return
	_error_label.text = ""
	var req: LobbyRequestScript = session_manager.kick_player(player_id)
	req.completed.connect(_on_kick_reply)


func _on_kick_reply(reply: Dictionary) -> void:
	if reply.get("ok", false) != true:
		_error_label.text = "Could not kick: " + _describe(reply)


func _on_leave_pressed() -> void:
	_leave_button.disabled = true
	var req: LobbyRequestScript = session_manager.leave_session()
	req.completed.connect(_on_leave_reply)


func _on_leave_reply(reply: Dictionary) -> void:
	_leave_button.disabled = false
	var raw: Variant = reply.get("error")
	var code := str(raw.get("code", "")) if raw is Dictionary else ""
	if reply.get("ok", false) == true or code == "NOT_IN_SESSION":
		left.emit()
	else:
		_error_label.text = "Could not leave: " + _describe(reply)


func _on_session_started(server_endpoint: String, _server_id: String) -> void:
	_error_label.text = ""
	refresh()
	game_starting.emit(server_endpoint)


func _on_session_start_failed(code: String, message: String) -> void:
	_error_label.text = "Could not start: %s (%s)" % [message, code]


func _on_session_closed(reason: String) -> void:
	_error_label.text = "The game was closed (%s)." % reason
	left.emit()


func _on_kicked() -> void:
	_error_label.text = "The host removed you from the game."
	left.emit()


static func _text(data: Dictionary, key: String) -> String:
	var value: Variant = data.get(key)
	if value == null:
		return ""
	return str(value)


static func _describe(reply: Dictionary) -> String:
	var raw: Variant = reply.get("error")
	var error: Dictionary = raw if raw is Dictionary else {}
	return "%s (%s)" % [str(error.get("message", "")), str(error.get("code", ""))]
