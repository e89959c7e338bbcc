extends Control
## Waiting room: the live member list (host and oneself marked, dropped players
## greyed with their seat-hold countdown), a ready checkbox per player (only yours
## can be ticked), Start (enabled only while the start rule holds) and Kick for the
## host, Leave, a chat box, the session state and, once started, the game server.
## refresh() redraws everything from SessionManager.session; it runs on every
## session_changed. Emits game_starting(server_endpoint) on session_started (the
## MultiplayerManager autoload connects by itself), and left() once this player is
## out of the session: Leave answered, kicked, or the session closed.
## Lobby data: the join code to share, the room's attributes, and for the host Kick
## and ban, Make host, Lock, and a settings edit (name, max players, map).

signal left()
signal game_starting(server_endpoint: String)

## By path, not class_name: see session_manager.gd.
const LobbyRequestScript := preload("../lobby_request.gd")
const DROPPED_COLOR := Color(0.5, 0.5, 0.5)

## The SessionManager to use; default /root/SessionManager (set it before the scene
## enters the tree to use another).
var session_manager: Node = null

var _starting := false
var _shown_chat := 0  # seq of the last line shown in the chat box
var _tick := 0.0

@onready var _title: Label = $Box/Title
@onready var _member_list: ItemList = $Box/MemberList
@onready var _start_button: Button = $Box/Buttons/StartButton
@onready var _kick_button: Button = $Box/Buttons/KickButton
@onready var _leave_button: Button = $Box/Buttons/LeaveButton
@onready var _status_label: Label = $Box/StatusLabel
@onready var _code_label: Label = $Box/CodeLabel
@onready var _attributes_label: Label = $Box/AttributesLabel
@onready var _host_buttons: HBoxContainer = $Box/HostButtons
@onready var _ban_button: Button = $Box/HostButtons/BanButton
@onready var _promote_button: Button = $Box/HostButtons/PromoteButton
@onready var _lock_button: Button = $Box/HostButtons/LockButton
@onready var _settings: HBoxContainer = $Box/Settings
@onready var _settings_name: LineEdit = $Box/Settings/NameEdit
@onready var _settings_max: SpinBox = $Box/Settings/MaxPlayers
@onready var _settings_map: LineEdit = $Box/Settings/MapEdit
@onready var _save_button: Button = $Box/Settings/SaveButton
@onready var _error_label: Label = $Box/ErrorLabel
@onready var _ready_box: VBoxContainer = $Box/ReadyBox
@onready var _chat_log: TextEdit = $Box/ChatLog
@onready var _chat_edit: LineEdit = $Box/ChatRow/ChatEdit
@onready var _send_button: Button = $Box/ChatRow/SendButton


func _ready() -> void:
	if session_manager == null:
		session_manager = get_node_or_null("/root/SessionManager")
	_error_label.text = ""
	_start_button.pressed.connect(_on_start_pressed)
	_kick_button.pressed.connect(_on_kick_pressed)
	_leave_button.pressed.connect(_on_leave_pressed)
	_send_button.pressed.connect(_on_send_pressed)
	_chat_edit.text_submitted.connect(_send_chat)
	_ban_button.pressed.connect(_on_ban_pressed)
	_promote_button.pressed.connect(_on_promote_pressed)
	_lock_button.pressed.connect(_on_lock_pressed)
	_save_button.pressed.connect(_on_save_pressed)
	if session_manager != null:
		session_manager.chat_message.connect(_on_chat_message)
		session_manager.player_disconnected.connect(_on_presence)
		session_manager.player_reconnected.connect(_on_presence.bind(0.0))
		session_manager.session_changed.connect(_on_session_changed)
		session_manager.session_started.connect(_on_session_started)
		session_manager.session_start_failed.connect(_on_session_start_failed)
		session_manager.session_closed.connect(_on_session_closed)
		session_manager.kicked.connect(_on_kicked)
	refresh()


## The hold countdowns tick once a second.
func _process(delta: float) -> void:
	_tick += delta
	if _tick >= 1.0:
		_tick = 0.0
		if session_manager != null and not session_manager.hold_until.is_empty():
			refresh()


## Redraws the room from SessionManager.session (and its chat_log, hold_until).
func refresh() -> void:
	if session_manager == null:
		_error_label.text = "No SessionManager: enable the Lobby plugin."
		return
	var current: Dictionary = session_manager.session
	var host_id := _text(current, "host_id")
	var me: String = session_manager.player_id
	_title.text = _text(current, "name")
	var code := _text(current, "join_code")
	_code_label.text = "" if code == "" else "Code: " + code
	var description := PackedStringArray()
	var raw_attributes: Variant = current.get("attributes")
	if raw_attributes is Dictionary:
		for key in raw_attributes:
			description.append("%s: %s" % [key, str(raw_attributes[key])])
	var locked: bool = current.get("locked", false) == true
	if locked:
		description.append("locked")
	_attributes_label.text = ", ".join(description)
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
		var present: bool = session_manager.is_present(player_id)
		if not present:
			var left_s: float = session_manager.hold_seconds_left(player_id)
			line += " (disconnected, %d s)" % ceili(left_s) if left_s > 0.0 else " (disconnected)"
		var index := _member_list.add_item(line)
		_member_list.set_item_metadata(index, player_id)
		if not present:
			_member_list.set_item_custom_fg_color(index, DROPPED_COLOR)
	var state := _text(current, "session_state")
	var host: bool = session_manager.is_host()
	_start_button.visible = host
	_kick_button.visible = host
	_start_button.disabled = _starting or not session_manager.start_rule_met()
	_kick_button.disabled = state != "WAITING"
	_host_buttons.visible = host and state == "WAITING"
	_settings.visible = host and state == "WAITING"
	_lock_button.text = "Unlock" if locked else "Lock"
	var max_players: Variant = current.get("max_players")
	if max_players is int or max_players is float:
		_settings_max.value = int(max_players)
	var endpoint := _text(current, "server_endpoint")
	_status_label.text = state if endpoint == "" else "%s, server %s" % [state, endpoint]
	var missing: Array = session_manager.not_ready()
	if state == "WAITING" and _text(current, "start_rule") == "all_ready" and not missing.is_empty():
		_status_label.text += " (not ready: %s)" % ", ".join(missing)
	_refresh_ready()
	_refresh_chat()


## One checkbox per member, ticked when ready; only yours can change, while WAITING.
func _refresh_ready() -> void:
	var players: Array = session_manager.members()
	while _ready_box.get_child_count() > players.size():
		var extra := _ready_box.get_child(_ready_box.get_child_count() - 1)
		_ready_box.remove_child(extra)
		extra.queue_free()
	while _ready_box.get_child_count() < players.size():
		var box := CheckBox.new()
		box.toggled.connect(_on_ready_toggled.bind(box))
		_ready_box.add_child(box)
	var waiting: bool = session_manager.session_state() == "WAITING"
	for i in players.size():
		var box: CheckBox = _ready_box.get_child(i)
		var player: Dictionary = players[i] if players[i] is Dictionary else {}
		var id := _text(player, "player_id")
		box.set_meta("player_id", id)
		box.text = _text(player, "name")
		box.set_pressed_no_signal(player.get("ready", false) == true)
		box.disabled = id != session_manager.player_id or not waiting
		box.modulate = Color.WHITE if session_manager.is_present(id) else DROPPED_COLOR


func _refresh_chat() -> void:
	var messages: Array = session_manager.chat_log
	if messages.is_empty():
		if _shown_chat != 0:
			_chat_log.text = ""
			_shown_chat = 0
		return
	var first := int(messages[0].get("seq", 0))
	var last := int(messages[messages.size() - 1].get("seq", 0))
	if _shown_chat != 0 and (_shown_chat < first - 1 or last < _shown_chat):
		_chat_log.text = ""  # another session, or lines we never had
		_shown_chat = 0
	for message in messages:
		var seq := int(message.get("seq", 0))
		if seq > _shown_chat:
			if _chat_log.text != "":
				_chat_log.text += "\n"
			_chat_log.text += "%s: %s" % [_text(message, "name"), _text(message, "text")]
			_shown_chat = seq
	_chat_log.set_caret_line(_chat_log.get_line_count() - 1)


func _on_chat_message(_message: Dictionary) -> void:
	_refresh_chat()


func _on_presence(_player_id: String, _hold_until: float) -> void:
	refresh()


func _on_ready_toggled(pressed: bool, box: CheckBox) -> void:
	if str(box.get_meta("player_id")) != session_manager.player_id:
		return
	var req: LobbyRequestScript = session_manager.set_ready(pressed)
	req.completed.connect(_on_ready_reply)


func _on_ready_reply(reply: Dictionary) -> void:
	if reply.get("ok", false) != true:
		_error_label.text = "Could not change ready: " + _describe(reply)
	refresh()


func _on_send_pressed() -> void:
	_send_chat(_chat_edit.text)


func _send_chat(text: String) -> void:
	if text.strip_edges() == "":
		return
	_chat_edit.text = ""
	var req: LobbyRequestScript = session_manager.send_chat(text)
	req.completed.connect(_on_chat_reply)


func _on_chat_reply(reply: Dictionary) -> void:
	if reply.get("ok", false) != true:
		_error_label.text = "Could not send: " + _describe(reply)


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


func _selected_other() -> String:
	var selected := _member_list.get_selected_items()
	if selected.is_empty():
		_error_label.text = "Pick a player first."
		return ""
	var player_id := str(_member_list.get_item_metadata(selected[0]))
	if player_id == session_manager.player_id:
		_error_label.text = "Pick another player."
		return ""
	_error_label.text = ""
	return player_id


func _on_ban_pressed() -> void:
	var player_id := _selected_other()
	if player_id != "":
		var req: LobbyRequestScript = session_manager.kick_player(player_id, true)
		req.completed.connect(_on_host_reply)


func _on_promote_pressed() -> void:
	var player_id := _selected_other()
	if player_id != "":
		var req: LobbyRequestScript = session_manager.promote_player(player_id)
		req.completed.connect(_on_host_reply)


func _on_lock_pressed() -> void:
	var locked: bool = session_manager.session.get("locked", false) == true
	var req: LobbyRequestScript = session_manager.update_session({"locked": not locked})
	req.completed.connect(_on_host_reply)


## Settings: the fields left empty are not changed.
func _on_save_pressed() -> void:
	var changes := {}
	if _settings_name.text.strip_edges() != "":
		changes["name"] = _settings_name.text.strip_edges()
	changes["max_players"] = int(_settings_max.value)
	if _settings_map.text.strip_edges() != "":
		changes["attributes"] = {"map": _settings_map.text.strip_edges()}
	var req: LobbyRequestScript = session_manager.update_session(changes)
	req.completed.connect(_on_host_reply)


func _on_host_reply(reply: Dictionary) -> void:
	if reply.get("ok", false) != true:
		_error_label.text = "Could not do that: " + _describe(reply)


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
