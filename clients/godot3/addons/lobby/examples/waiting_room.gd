# Waiting room: the live member list (host marked, dropped players greyed with
# their seat-hold countdown), a ready checkbox per player (yours to tick), the
# host's Start (enabled only while the session's start rule holds) and Kick,
# Leave, a chat box, and why a start failed. It only reads SessionManager's
# mirror (session, chat_log, hold_until), which replies and events keep current.
# Lobby data: the join code to share, the room's attributes, and for the host
# Kick and ban, Make host, Lock, and a settings edit (name, max players, map).
extends Control

signal left()
signal game_starting(server_endpoint)

const DROPPED_COLOR := Color(0.5, 0.5, 0.5)

var session_manager: Node = null
var _shown_chat := 0  # seq of the last chat line in ChatLog
var _countdown := 0.0


func _ready() -> void:
	if session_manager == null:
		session_manager = get_node_or_null("/root/SessionManager")
	$Box/Buttons/StartButton.connect("pressed", self, "_on_start_pressed")
	$Box/Buttons/KickButton.connect("pressed", self, "_on_kick_pressed")
	$Box/Buttons/LeaveButton.connect("pressed", self, "_on_leave_pressed")
	$Box/ChatRow/SendButton.connect("pressed", self, "_on_send_pressed")
	$Box/ChatRow/ChatEdit.connect("text_entered", self, "_on_chat_entered")
	$Box/HostButtons/BanButton.connect("pressed", self, "_on_ban_pressed")
	$Box/HostButtons/PromoteButton.connect("pressed", self, "_on_promote_pressed")
	$Box/HostButtons/LockButton.connect("pressed", self, "_on_lock_pressed")
	$Box/Settings/SaveButton.connect("pressed", self, "_on_save_pressed")
	session_manager.connect("session_changed", self, "_on_session_changed")
	session_manager.connect("session_started", self, "_on_session_started")
	session_manager.connect("session_start_failed", self, "_on_start_failed")
	session_manager.connect("kicked", self, "_on_removed", ["You were kicked"])
	session_manager.connect("session_closed", self, "_on_closed")
	session_manager.connect("chat_message", self, "_on_chat_message")
	session_manager.connect("player_disconnected", self, "_on_presence")
	session_manager.connect("player_reconnected", self, "_on_presence", [0.0])
	refresh()


# The hold countdowns tick once a second.
func _process(delta: float) -> void:
	_countdown += delta
	if _countdown >= 1.0:
		_countdown = 0.0
		if not session_manager.hold_until.empty():
			refresh()


func refresh() -> void:
	var session: Dictionary = session_manager.session
	var list: ItemList = $Box/MemberList
	list.clear()
	$Box/Title.text = str(session.get("name", "Not in a game"))
	var code = session.get("join_code")
	$Box/CodeLabel.text = "Code: %s" % code if typeof(code) == TYPE_STRING else ""
	var attributes = session.get("attributes", {})
	var description := PoolStringArray()
	if typeof(attributes) == TYPE_DICTIONARY:
		for key in attributes:
			description.append("%s: %s" % [key, attributes[key]])
	if session.get("locked", false):
		description.append("locked")
	$Box/AttributesLabel.text = description.join(", ")
	for player in session_manager.members():
		var id: String = player["player_id"]
		var line: String = player["name"]
		if id == session.get("host_id"):
			line += " (host)"
		if id == session_manager.player_id:
			line += " (you)"
		var present: bool = session_manager.is_present(id)
		if not present:
			line += " (disconnected"
			var left_s: float = session_manager.hold_seconds_left(id)
			if left_s > 0.0:
				line += ", %d s" % int(ceil(left_s))
			line += ")"
		list.add_item(line)
		var index := list.get_item_count() - 1
		list.set_item_metadata(index, id)
		if not present:
			list.set_item_custom_fg_color(index, DROPPED_COLOR)
	_refresh_ready()
	_refresh_chat()
	var host: bool = session_manager.is_host()
	var waiting: bool = session_manager.session_state() == "WAITING"
	$Box/Buttons/StartButton.visible = host
	$Box/Buttons/KickButton.visible = host
	$Box/Buttons/StartButton.disabled = not session_manager.start_rule_met()
	$Box/Buttons/KickButton.disabled = not waiting
	$Box/HostButtons.visible = host and waiting
	$Box/Settings.visible = host and waiting
	$Box/HostButtons/LockButton.text = "Unlock" if session.get("locked", false) else "Lock"
	$Box/Settings/MaxPlayers.value = int(session.get("max_players", 4))
	var status: String = session_manager.session_state()
	if session_manager.server_endpoint() != "":
		status += " server " + session_manager.server_endpoint()
	elif waiting and str(session.get("start_rule", "host")) == "all_ready":
		var missing: Array = session_manager.not_ready()
		if not missing.empty():
			status += " (not ready: %s)" % PoolStringArray(missing).join(", ")
	$Box/StatusLabel.text = status


# One checkbox per member: ticked when ready; only yours can be changed, and
# only while the room waits.
func _refresh_ready() -> void:
	var box: VBoxContainer = $Box/ReadyBox
	var players: Array = session_manager.members()
	while box.get_child_count() > players.size():
		var extra: Node = box.get_child(box.get_child_count() - 1)
		box.remove_child(extra)
		extra.queue_free()
	while box.get_child_count() < players.size():
		var check := CheckBox.new()
		check.connect("toggled", self, "_on_ready_toggled", [check])
		box.add_child(check)
	var waiting: bool = session_manager.session_state() == "WAITING"
	for i in range(players.size()):
		var check: CheckBox = box.get_child(i)
		var id: String = players[i]["player_id"]
		check.set_meta("player_id", id)
		check.text = players[i]["name"]
		check.set_block_signals(true)
		check.pressed = bool(players[i].get("ready", false))
		check.set_block_signals(false)
		check.disabled = id != session_manager.player_id or not waiting
		check.modulate = Color(1, 1, 1) if session_manager.is_present(id) else DROPPED_COLOR


func _refresh_chat() -> void:
	var log_view: TextEdit = $Box/ChatLog
	var messages: Array = session_manager.chat_log
	if messages.empty():
		if _shown_chat != 0:
			log_view.text = ""
			_shown_chat = 0
		return
	var first := int(messages[0]["seq"])
	var last := int(messages[messages.size() - 1]["seq"])
	if _shown_chat != 0 and (_shown_chat < first - 1 or last < _shown_chat):
		log_view.text = ""  # a different session, or lines we never had
		_shown_chat = 0
	for message in messages:
		if int(message["seq"]) > _shown_chat:
			if log_view.text != "":
				log_view.text += "\n"
			log_view.text += "%s: %s" % [message["name"], message["text"]]
			_shown_chat = int(message["seq"])
	log_view.cursor_set_line(log_view.get_line_count() - 1)


func _on_session_changed(_session: Dictionary) -> void:
	refresh()


func _on_chat_message(_message: Dictionary) -> void:
	_refresh_chat()


func _on_presence(_player_id: String, _hold_until: float) -> void:
	refresh()


func _on_ready_toggled(pressed: bool, check: CheckBox) -> void:
	if str(check.get_meta("player_id")) != session_manager.player_id:
		return
	var reply = yield(session_manager.set_ready(pressed), "completed")
	if not reply.get("ok", false):
		_show_error(reply)
	refresh()


func _on_send_pressed() -> void:
	_send_chat($Box/ChatRow/ChatEdit.text)


func _on_chat_entered(text: String) -> void:
	_send_chat(text)


func _send_chat(text: String) -> void:
	if text.strip_edges() == "":
		return
	$Box/ChatRow/ChatEdit.text = ""
	var reply = yield(session_manager.send_chat(text), "completed")
	if not reply.get("ok", false):
		_show_error(reply)


func _on_start_pressed() -> void:
	$Box/ErrorLabel.text = ""
	$Box/Buttons/StartButton.disabled = true
	var reply = yield(session_manager.start_session(), "completed")
	if not reply.get("ok", false):
		_show_error(reply)
	refresh()


func _on_kick_pressed() -> void:
	var selected: PoolIntArray = $Box/MemberList.get_selected_items()
	if selected.empty():
		$Box/ErrorLabel.text = "Select a player to kick"
		return
	var target: String = $Box/MemberList.get_item_metadata(selected[0])
	var reply = yield(session_manager.kick_player(target), "completed")
	if not reply.get("ok", false):
		_show_error(reply)


func _selected_player() -> String:
	var selected: PoolIntArray = $Box/MemberList.get_selected_items()
	if selected.empty():
		$Box/ErrorLabel.text = "Select a player first"
		return ""
	return $Box/MemberList.get_item_metadata(selected[0])


func _on_ban_pressed() -> void:
	var target := _selected_player()
	if target == "":
		return
	var reply = yield(session_manager.kick_player(target, true), "completed")
	if not reply.get("ok", false):
		_show_error(reply)


func _on_promote_pressed() -> void:
	var target := _selected_player()
	if target == "":
		return
	var reply = yield(session_manager.promote_player(target), "completed")
	if not reply.get("ok", false):
		_show_error(reply)


func _on_lock_pressed() -> void:
	var locked: bool = session_manager.session.get("locked", false)
	var reply = yield(session_manager.update_session({"locked": not locked}), "completed")
	if not reply.get("ok", false):
		_show_error(reply)


# Settings: the fields left empty are not changed.
func _on_save_pressed() -> void:
	var changes := {}
	var new_name: String = $Box/Settings/NameEdit.text.strip_edges()
	if new_name != "":
		changes["name"] = new_name
	if int($Box/Settings/MaxPlayers.value) != int(session_manager.session.get("max_players", 0)):
		changes["max_players"] = int($Box/Settings/MaxPlayers.value)
	var new_map: String = $Box/Settings/MapEdit.text.strip_edges()
	if new_map != "":
		changes["attributes"] = {"map": new_map}
	var reply = yield(session_manager.update_session(changes), "completed")
	if not reply.get("ok", false):
		_show_error(reply)


func _on_leave_pressed() -> void:
	var reply = yield(session_manager.leave_session(), "completed")
	if reply.get("ok", false) or reply["error"]["code"] == "NOT_IN_SESSION":
		emit_signal("left")
	else:
		_show_error(reply)


func _on_session_started(endpoint: String, _server_id: String) -> void:
	emit_signal("game_starting", endpoint)


func _on_start_failed(code: String, message: String) -> void:
	$Box/ErrorLabel.text = "Start failed: %s (%s)" % [message, code]


func _on_removed(why: String) -> void:
	$Box/ErrorLabel.text = why
	refresh()


func _on_closed(reason: String) -> void:
	_on_removed("The game ended (%s)" % reason)


func _show_error(reply: Dictionary) -> void:
	$Box/ErrorLabel.text = "%s (%s)" % [reply["error"]["message"], reply["error"]["code"]]
