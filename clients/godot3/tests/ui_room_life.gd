# Room life in the example waiting room, in the headless engine: the host ticks
# its ready checkbox, Start unlocks only once the guest (played by the suite
# over the wire) is ready too; a chat line typed into the scene reaches the
# guest and the guest's line shows in the scene's chat box; the guest's socket
# is cut and its line is greyed with the hold countdown, then normal again when
# it resumes; then the scene's Start starts the game, and a chat that restarts
# from seq 1 (a rebuilt store) replaces the chat box's lines.
extends "res://tests/harness.gd"

var sm: Node
var room: Control
var phase := "hello"
var guest_id := ""


func setup() -> void:
	sm = add_lobby_nodes(false)[0]
	connect_lobby(sm)


func _on_connected() -> void:
	var reply = yield(sm.hello("rl-host"), "completed")
	if not check(reply.get("ok", false), "hello"):
		return
	# Hosted through the Host dialog: everyone must be ready, 2 players needed.
	var dialog: Control = load("res://addons/lobby/examples/host_dialog.tscn").instance()
	root.add_child(dialog)
	dialog.get_node("Box/NameEdit").text = "life room"
	dialog.get_node("Box/AllReadyCheck").pressed = true
	dialog.get_node("Box/MinPlayers").value = 2
	dialog.connect("hosted", self, "_on_hosted", [dialog])
	dialog.get_node("Box/HostButton").emit_signal("pressed")


func _on_hosted(session: Dictionary, dialog: Control) -> void:
	dialog.queue_free()
	if not check(session["start_rule"] == "all_ready" and int(session["min_players"]) == 2,
			"hosted with the rule: %s" % [session]):
		return
	room = load("res://addons/lobby/examples/waiting_room.tscn").instance()
	root.add_child(room)
	phase = "wait_join"
	say("RL_HOSTED session=%s rule=%s" % [sm.session["session_id"], sm.session["start_rule"]])


func step(_delta: float) -> void:
	match phase:
		"wait_join":
			if sm.members().size() == 2 and ready_box().get_child_count() == 2:
				guest_id = str(sm.members()[1]["player_id"])
				if not check(start_button().disabled, "Start enabled with nobody ready"):
					return
				if not check(ready_box().get_child(1).disabled, "guest's checkbox is not mine"):
					return
				say("RL_JOINED start_disabled=%s" % start_button().disabled)
				phase = "host_ready"
				ready_box().get_child(0).emit_signal("toggled", true)
		"host_ready":
			if sm.is_ready(sm.player_id) and ready_box().get_child(0).pressed:
				say("RL_HOST_READY start_disabled=%s status=%s" % [start_button().disabled,
						status().replace(" ", "_")])
				phase = "wait_guest_ready"
		"wait_guest_ready":
			if sm.is_ready(guest_id) and not start_button().disabled:
				say("RL_START_UNLOCKED checked=%s" % ready_box().get_child(1).pressed)
				phase = "wait_chat"
				var edit: LineEdit = room.get_node("Box/ChatRow/ChatEdit")
				edit.text = "gl hf from the scene"
				room.get_node("Box/ChatRow/SendButton").emit_signal("pressed")
		"wait_chat":
			if chat_text().find("rl-guest: hi from the wire") >= 0:
				if not check(chat_text().find("rl-host: gl hf from the scene") >= 0,
						"own line in the chat box: %s" % chat_text()):
					return
				say("RL_CHAT_SHOWN lines=%d" % room.get_node("Box/ChatLog").get_line_count())
				phase = "wait_drop"
		"wait_drop":
			var line := member_line(1)
			if line.find("(disconnected") >= 0 and line.find(" s)") >= 0:
				var grey: Color = room.get_node("Box/MemberList").get_item_custom_fg_color(1)
				if not check(grey == room.DROPPED_COLOR, "dropped line greyed"):
					return
				say("RL_GUEST_DISCONNECTED line=%s" % line.replace(" ", "_"))
				phase = "wait_back"
		"wait_back":
			if member_line(1) == "rl-guest" and sm.is_present(guest_id):
				say("RL_GUEST_RECONNECTED")
				phase = "starting"
				start_button().emit_signal("pressed")
		"starting":
			if status().begins_with("CONNECTING server "):
				say("RL_STARTED status=%s" % status().replace(" ", "_"))
				_chat_restart()
				phase = "done"


# A lobby that lost its store and rebuilt the session numbers its chat from 1
# again: the mirror and the chat box start over instead of dropping the line.
func _chat_restart() -> void:
	sm._on_event({"type": "chat_message", "session_id": sm.session["session_id"], "seq": 1,
			"player_id": guest_id, "name": "rl-guest", "text": "after a store loss",
			"sent_at": 1.0})
	if not check(sm.chat_log.size() == 1 and sm.chat_log[0]["text"] == "after a store loss",
			"chat log after a restart: %s" % [sm.chat_log]):
		return
	if check(chat_text() == "rl-guest: after a store loss", "chat box: %s" % chat_text()):
		pass_with("RL_OK")


func ready_box() -> VBoxContainer:
	return room.get_node("Box/ReadyBox") as VBoxContainer


func start_button() -> Button:
	return room.get_node("Box/Buttons/StartButton") as Button


func status() -> String:
	return room.get_node("Box/StatusLabel").text


func chat_text() -> String:
	return room.get_node("Box/ChatLog").text


func member_line(i: int) -> String:
	var list: ItemList = room.get_node("Box/MemberList")
	return list.get_item_text(i) if i < list.get_item_count() else ""
