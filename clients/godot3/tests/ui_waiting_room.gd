# The example menus in the headless engine, driven by pressing their buttons:
# Host dialog -> waiting room; the member list follows joins, a kick (pressed
# here), a rejoin and a leave by a player the suite plays over the wire; Start
# fails while no game server is free (the error is shown), and succeeds after
# the suite registered one (--retry-file appears).
extends "res://tests/harness.gd"

var sm: Node
var room: Control
var phase := "hello"
var guest_id := ""


func setup() -> void:
	sm = add_lobby_nodes(false)[0]
	connect_lobby(sm)


func _on_connected() -> void:
	var reply = yield(sm.hello("ui-host"), "completed")
	if not check(reply.get("ok", false), "hello"):
		return
	var dialog: Control = load("res://addons/lobby/examples/host_dialog.tscn").instance()
	root.add_child(dialog)
	dialog.connect("hosted", self, "_on_hosted", [dialog])
	dialog.get_node("Box/NameEdit").text = "ui room"
	dialog.get_node("Box/MaxPlayers").value = 3
	phase = "hosting"
	dialog.get_node("Box/HostButton").emit_signal("pressed")


func _on_hosted(session: Dictionary, dialog: Control) -> void:
	dialog.queue_free()
	if not check(session["max_players"] == 3 and session["name"] == "ui room", "hosted"):
		return
	room = load("res://addons/lobby/examples/waiting_room.tscn").instance()
	root.add_child(room)
	room.connect("left", self, "_on_left")
	sm.connect("session_changed", self, "_on_changed")
	if not check(lines() == ["ui-host (host) (you)"], "members after host: %s" % [lines()]):
		return
	if not check(button("StartButton").visible and button("KickButton").visible, "host buttons"):
		return
	phase = "wait_join"
	say("UI_HOSTED session=%s" % session["session_id"])


func _on_changed(_session: Dictionary) -> void:
	# Deferred: the waiting room redraws on the same signal.
	call_deferred("_after_change")


func _after_change() -> void:
	var now := lines()
	if phase == "wait_join" and now.size() == 2:
		if not check(now[1] == "ui-guest", "members after join: %s" % [now]):
			return
		guest_id = room.get_node("Box/MemberList").get_item_metadata(1)
		say("UI_MEMBERS %s" % PoolStringArray(now).join("|"))
		phase = "kicking"
		room.get_node("Box/MemberList").select(1)
		button("KickButton").emit_signal("pressed")
	elif phase == "kicking" and now.size() == 1:
		say("UI_KICKED player=%s" % guest_id)
		phase = "wait_rejoin"
	elif phase == "wait_rejoin" and now.size() == 2:
		say("UI_REJOINED")
		phase = "start_fails"
		button("StartButton").emit_signal("pressed")
	elif phase == "started" and now.size() == 1:
		say("UI_MEMBER_LEFT")
		phase = "leaving"
		button("LeaveButton").emit_signal("pressed")


func step(_delta: float) -> void:
	if phase == "start_fails":
		var error: String = room.get_node("Box/ErrorLabel").text
		if error.find("NO_SERVER_AVAILABLE") >= 0 and sm.session_state() == "WAITING" \
				and not button("StartButton").disabled:
			say("UI_START_FAILED error=%s" % error.replace(" ", "_"))
			phase = "wait_retry"
	elif phase == "wait_retry" and File.new().file_exists(args.get("retry-file")):
		phase = "starting"
		button("StartButton").emit_signal("pressed")
	elif phase == "starting":
		var status: String = room.get_node("Box/StatusLabel").text
		if status.begins_with("CONNECTING server "):
			if check(room.get_node("Box/ErrorLabel").text == "", "error cleared on start"):
				say("UI_STARTED status=%s" % status.replace(" ", "_"))
				phase = "started"


func _on_left() -> void:
	if check(phase == "leaving" and not sm.in_session(), "left"):
		pass_with("UI_OK")


func lines() -> Array:
	var list: ItemList = room.get_node("Box/MemberList")
	var out := []
	for i in range(list.get_item_count()):
		out.append(list.get_item_text(i))
	return out


func button(name: String) -> Button:
	return room.get_node("Box/Buttons/" + name) as Button
