# Waiting room: the live member list (host marked), the host's Start and Kick,
# Leave, and why a start failed. It only reads SessionManager.session, which
# the SessionManager keeps current from replies and events.
extends Control

signal left()
signal game_starting(server_endpoint)

var session_manager: Node = null


func _ready() -> void:
	if session_manager == null:
		session_manager = get_node_or_null("/root/SessionManager")
	$Box/Buttons/StartButton.connect("pressed", self, "_on_start_pressed")
	$Box/Buttons/KickButton.connect("pressed", self, "_on_kick_pressed")
	$Box/Buttons/LeaveButton.connect("pressed", self, "_on_leave_pressed")
	session_manager.connect("session_changed", self, "_on_session_changed")
	session_manager.connect("session_started", self, "_on_session_started")
	session_manager.connect("session_start_failed", self, "_on_start_failed")
	session_manager.connect("kicked", self, "_on_removed", ["You were kicked"])
	session_manager.connect("session_closed", self, "_on_closed")
	refresh()


func refresh() -> void:
	var session: Dictionary = session_manager.session
	var list: ItemList = $Box/MemberList
	list.clear()
	$Box/Title.text = str(session.get("name", "Not in a game"))
	for player in session_manager.members():
		var line: String = player["name"]
		if player["player_id"] == session.get("host_id"):
			line += " (host)"
		if player["player_id"] == session_manager.player_id:
			line += " (you)"
		list.add_item(line)
		list.set_item_metadata(list.get_item_count() - 1, player["player_id"])
	var host: bool = session_manager.is_host()
	var waiting: bool = session_manager.session_state() == "WAITING"
	$Box/Buttons/StartButton.visible = host
	$Box/Buttons/KickButton.visible = host
	$Box/Buttons/StartButton.disabled = not waiting
	$Box/Buttons/KickButton.disabled = not waiting
	var status: String = session_manager.session_state()
	if session_manager.server_endpoint() != "":
		status += " server " + session_manager.server_endpoint()
	$Box/StatusLabel.text = status


func _on_session_changed(_session: Dictionary) -> void:
	refresh()


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
