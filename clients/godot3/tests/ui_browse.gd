# The Browse Games scene in the headless engine, driven by its buttons: pages
# of two (Refresh, Next page), the lock on a password session, the password
# prompt after a refused join, and the join itself.
extends "res://tests/harness.gd"

var sm: Node
var browse: Control
var phase := "hello"
var shown := []


func setup() -> void:
	sm = add_lobby_nodes(false)[0]
	connect_lobby(sm)


func _on_connected() -> void:
	var reply = yield(sm.hello("browser"), "completed")
	if not check(reply.get("ok", false), "hello"):
		return
	browse = load("res://addons/lobby/examples/browse_games.tscn").instance()
	browse.page_size = 2
	root.add_child(browse)
	browse.connect("joined", self, "_on_joined")
	_press("Buttons/RefreshButton", "page1")


func step(_delta: float) -> void:
	if browse == null or lines() == shown:
		if phase == "join_refused" and node("ErrorLabel").text != "":
			say("BROWSE_JOIN_REFUSED prompt=%s error=%s" % [
				node("PasswordEdit").visible, node("ErrorLabel").text.replace(" ", "_")])
			node("PasswordEdit").text = args.get("password")
			_press("JoinButton", "joining")
		return
	shown = lines()
	var next_enabled: bool = not node("Buttons/NextPageButton").disabled
	if phase == "page1":
		say("BROWSE_PAGE1 next=%s %s" % [next_enabled, PoolStringArray(shown).join("|")])
		_press("Buttons/NextPageButton", "page2")
	elif phase == "page2":
		say("BROWSE_PAGE2 next=%s %s" % [next_enabled, PoolStringArray(shown).join("|")])
		_press("Buttons/RefreshButton", "again")
	elif phase == "again":
		# The first line is the newest session: the locked one.
		node("SessionList").select(0)
		node("SessionList").emit_signal("item_selected", 0)
		say("BROWSE_SELECTED prompt=%s" % node("PasswordEdit").visible)
		_press("JoinButton", "join_refused")


func _on_joined(session: Dictionary) -> void:
	if check(phase == "joining" and sm.session.get("session_id") == session["session_id"],
			"joined"):
		say("BROWSE_JOINED session=%s players=%d" % [session["session_id"], sm.members().size()])
		pass_with("BROWSE_OK")


func _press(path: String, next_phase: String) -> void:
	phase = next_phase
	node(path).emit_signal("pressed")


func node(path: String) -> Control:
	return browse.get_node("Box/" + path) as Control


func lines() -> Array:
	var out := []
	if browse == null:
		return out
	var list: ItemList = browse.get_node("Box/SessionList")
	for i in range(list.get_item_count()):
		out.append(list.get_item_text(i))
	return out
