# The lobby-data parts of the example menus, driven by their buttons in the
# headless engine. --mode=host: Host dialog (mode, map, Unlisted) -> waiting room
# (code and attributes shown); once the guest is in: Kick and ban, Lock, and a
# settings edit. --mode=guest: Browse with a mode filter (the unlisted room is not
# there), Join by code, kicked, and Join by code again refused (banned).
extends "res://tests/harness.gd"

var sm: Node
var room: Control
var browse: Control
var phase := ""


func setup() -> void:
	sm = add_lobby_nodes(false)[0]
	sm.connect("session_changed", self, "_on_changed")
	sm.connect("kicked", self, "_on_kicked")
	connect_lobby(sm)


func _on_connected() -> void:
	var mode: String = args.get("mode", "")
	var reply = yield(sm.hello("ui-" + mode), "completed")
	if not check(reply.get("ok", false), "hello"):
		return
	if mode == "host":
		var dialog: Control = load("res://addons/lobby/examples/host_dialog.tscn").instance()
		root.add_child(dialog)
		dialog.connect("hosted", self, "_on_hosted", [dialog])
		dialog.get_node("Box/NameEdit").text = "friends only"
		dialog.get_node("Box/ModeEdit").text = "ctf"
		dialog.get_node("Box/MapEdit").text = "dust"
		dialog.get_node("Box/UnlistedCheck").pressed = true
		dialog.get_node("Box/HostButton").emit_signal("pressed")
		return
	browse = load("res://addons/lobby/examples/browse_games.tscn").instance()
	root.add_child(browse)
	browse.connect("joined", self, "_on_joined")
	browse.get_node("Box/Filters/ModeFilter").text = "ctf"
	phase = "browsing"
	browse.refresh()
	# The list comes back in a later frame; the code box is used after it.
	yield(create_timer(0.5), "timeout")
	var list: ItemList = browse.get_node("Box/SessionList")
	say("UI_BROWSE items=%d" % list.get_item_count())
	var code: String = args.get("code", "")
	browse.get_node("Box/CodeBox/CodeEdit").text = code.substr(0, 3).to_lower() + "-" + \
			code.substr(3, 3).to_lower()
	phase = "joining"
	browse.get_node("Box/CodeBox/JoinCodeButton").emit_signal("pressed")


func _on_hosted(session: Dictionary, dialog: Control) -> void:
	dialog.queue_free()
	room = load("res://addons/lobby/examples/waiting_room.tscn").instance()
	root.add_child(room)
	say("UI_CODE code=%s visibility=%s label=%s attrs=%s" % [session["join_code"],
			session["visibility"], text("CodeLabel").replace(" ", "_"),
			text("AttributesLabel").replace(" ", "")])
	phase = "wait_guest"


func text(path: String) -> String:
	return room.get_node("Box/" + path).text


func _on_changed(_session: Dictionary) -> void:
	call_deferred("_after_change")  # the scenes redraw on the same signal


func _after_change() -> void:
	if room == null:
		return
	var members: ItemList = room.get_node("Box/MemberList")
	if phase == "wait_guest" and members.get_item_count() == 2:
		members.select(1)
		phase = "banning"
		room.get_node("Box/HostButtons/BanButton").emit_signal("pressed")
	elif phase == "banning" and members.get_item_count() == 1:
		say("UI_BANNED_GUEST")
		phase = "locking"
		room.get_node("Box/HostButtons/LockButton").emit_signal("pressed")
	elif phase == "locking" and sm.session.get("locked", false):
		say("UI_LOCKED button=%s attrs=%s" % [room.get_node("Box/HostButtons/LockButton").text,
				text("AttributesLabel").replace(" ", "")])
		phase = "saving"
		room.get_node("Box/Settings/NameEdit").text = "renamed"
		room.get_node("Box/Settings/MapEdit").text = "aztec"
		room.get_node("Box/Settings/SaveButton").emit_signal("pressed")
	elif phase == "saving" and text("Title") == "renamed":
		say("UI_SAVED title=%s attrs=%s" % [text("Title"), text("AttributesLabel").replace(" ", "")])
		pass_with("UI_HOST_OK")


func _on_joined(session: Dictionary) -> void:
	say("UI_JOINED code=%s" % session["join_code"])
	phase = "joined"


func _on_kicked() -> void:
	if phase != "joined":
		return
	phase = "rejoining"
	browse.get_node("Box/CodeBox/JoinCodeButton").emit_signal("pressed")
	yield(create_timer(0.5), "timeout")
	say("UI_REJOIN error=%s" % browse.get_node("Box/ErrorLabel").text.replace(" ", "_"))
	pass_with("UI_GUEST_OK")
