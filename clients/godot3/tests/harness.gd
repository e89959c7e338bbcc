# Base of the suite's Godot scripts: arguments, an own deadline, and a verdict
# given once (a later quit() would override the first; see godot-notes).
# The suite passes a script only on exit code 0 AND its OK marker line.
extends SceneTree

var args := {}
var _verdict_given := false
var _deadline_msec := 0
var _quit_at_msec := -1
var _quit_code := 1


func _initialize() -> void:
	for arg in OS.get_cmdline_args():
		if arg.begins_with("--") and arg.find("=") > 2:
			var eq: int = arg.find("=")
			args[arg.substr(2, eq - 2)] = arg.substr(eq + 1, arg.length())
	_deadline_msec = OS.get_ticks_msec() + int(float(args.get("deadline", "60")) * 1000)
	setup()


func _idle(delta: float) -> bool:
	var now := OS.get_ticks_msec()
	if _quit_at_msec != -1:
		if _quit_at_msec >= 0 and now >= _quit_at_msec:
			_quit_at_msec = -2
			quit(_quit_code)
		return false
	if now > _deadline_msec:
		fail("deadline passed")
		return false
	step(delta)
	return false


# Overridden by each script.
func setup() -> void:
	pass


func step(_delta: float) -> void:
	pass


func say(line: String) -> void:
	print(line)


func check(condition: bool, what: String) -> bool:
	if not condition:
		fail(what)
	return condition


func pass_with(marker: String) -> void:
	_verdict(0, marker)


func fail(why: String) -> void:
	_verdict(1, "FAIL " + why)


# Quits a little later, so that packets sent just before (ENet, RPC replies)
# leave the process.
func _verdict(code: int, line: String) -> void:
	if _verdict_given:
		return
	_verdict_given = true
	say(line)
	_quit_code = code
	_quit_at_msec = OS.get_ticks_msec() + 100


func add_lobby_nodes(with_multiplayer: bool) -> Array:
	var sm: Node = load("res://addons/lobby/session_manager.gd").new()
	sm.name = "SessionManager"
	root.add_child(sm)
	var mm: Node = null
	if with_multiplayer:
		mm = load("res://addons/lobby/multiplayer_manager.gd").new()
		mm.name = "MultiplayerManager"
		mm.session_manager = sm
		root.add_child(mm)
	return [sm, mm]


# Opens the lobby socket to --url; the script's _on_connected(), which every
# lobby-driven script has, runs once it is open.
func connect_lobby(sm: Node) -> void:
	sm.connect("connected", self, "_on_connected")
	check(sm.connect_to_lobby(args.get("url", "")) == OK, "connect_to_lobby")
