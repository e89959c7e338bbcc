# A player's game process, driven only by lobby events: --mode=host creates a
# session and starts it once a guest joined; --mode=guest finds that session
# in the browser and joins it; --mode=rejoin is a guest's game restarted after
# a crash (same user:// directory). Both then follow session_started into the ENet
# game server with a join ticket, and pass on session_closed "completed".
# The guest also reports its resume after the suite cuts its WebSocket, and
# both report ENet drops and rejoins when the game server restarts.
extends "res://tests/harness.gd"

var sm: Node
var mm: Node
var mode := ""
var session_id := ""
var in_progress_seen := false
var reconnecting_seen := false
var games_joined := 0


func setup() -> void:
	mode = args.get("mode", "")
	var nodes := add_lobby_nodes(true)
	sm = nodes[0]
	mm = nodes[1]
	sm.request_timeout = 5.0
	sm.reconnect_base_delay = 0.2
	sm.connect("player_joined", self, "_on_player_joined")
	sm.connect("player_left", self, "_on_player_left")
	sm.connect("session_started", self, "_on_session_started")
	sm.connect("session_in_progress", self, "_on_in_progress")
	sm.connect("session_closed", self, "_on_closed")
	sm.connect("reconnecting", self, "_on_reconnecting")
	sm.connect("reconnected", self, "_on_reconnected")
	sm.connect("disconnected", self, "_on_disconnected")
	mm.connect("game_connected", self, "_on_game_connected")
	mm.connect("gave_up", self, "_on_gave_up")
	mm.connect("game_connection_failed", self, "_on_game_failed")
	mm.connect("game_disconnected", self, "_on_game_disconnected")
	connect_lobby(sm)


func _on_connected() -> void:
	if sm.player_id != "":
		return  # a reconnect: the SessionManager sends hello by itself
	var reply = yield(sm.hello(args.get("player", mode)), "completed")
	if not check(reply.get("ok", false), "hello: %s" % reply):
		return
	say("%s_HELLO player=%s" % [mode.to_upper(), sm.player_id])
	if mode == "host":
		_host()
	elif mode == "rejoin":
		_rejoined(reply)
	else:
		_find_and_join(args.get("session", ""))


# A restarted game: hello() sent the token saved in user:// by the process
# that was killed, so this is the same player, back in its running session.
func _rejoined(reply: Dictionary) -> void:
	session_id = args.get("session", "")
	if not check(reply["resumed"] and sm.session.get("session_id", "") == session_id,
			"restart did not resume into %s: %s" % [session_id, reply]):
		return
	in_progress_seen = sm.session_state() == "IN_PROGRESS"
	say("REJOIN_RESUMED session=%s state=%s" % [session_id, sm.session_state()])


func _host() -> void:
	var reply = yield(sm.create_session(args.get("session_name", "godot night"), 4), "completed")
	if not check(reply.get("ok", false), "create_session: %s" % reply):
		return
	session_id = sm.session["session_id"]
	check(sm.is_host() and sm.session_state() == "WAITING", "host mirror after create")
	say("HOST_CREATED session=%s" % session_id)


func _on_player_joined(player_id: String, player_name: String) -> void:
	if mode != "host":
		return
	# The mirror is updated before the signal: the guest is already listed.
	var ids := []
	for player in sm.members():
		ids.append(player["player_id"])
	if not check(ids.size() == 2 and ids[1] == player_id, "members after join: %s" % [ids]):
		return
	say("HOST_SAW_JOIN player=%s name=%s" % [player_id, player_name])
	var reply = yield(sm.start_session(), "completed")
	if not check(reply.get("ok", false), "start_session: %s" % reply):
		return
	say("HOST_STARTED endpoint=%s" % sm.server_endpoint())


func _on_player_left(player_id: String, reason: String) -> void:
	say("%s_PLAYER_LEFT player=%s reason=%s" % [mode.to_upper(), player_id, reason])


func _find_and_join(wanted: String) -> void:
	var cursor := ""
	var found := {}
	for _page in range(20):
		var reply = yield(sm.list_sessions(5, cursor), "completed")
		if not check(reply.get("ok", false), "list_sessions: %s" % reply):
			return
		for listed in reply["sessions"]:
			if listed["session_id"] == wanted:
				found = listed
		if not found.empty() or reply.get("next_cursor") == null:
			break
		cursor = reply["next_cursor"]
	if not check(not found.empty(), "session %s not listed" % wanted):
		return
	say("GUEST_LISTED session=%s players=%d" % [wanted, int(found["player_count"])])
	var joined = yield(sm.join_session(wanted), "completed")
	if not check(joined.get("ok", false), "join_session: %s" % joined):
		return
	session_id = wanted
	check(sm.members().size() == 2 and not sm.is_host(), "guest mirror after join")
	say("GUEST_JOINED session=%s members=%d" % [wanted, sm.members().size()])


func _on_session_started(endpoint: String, _server_id: String) -> void:
	check(endpoint == sm.server_endpoint() and sm.session_state() == "CONNECTING",
			"mirror at session_started")
	say("%s_SESSION_STARTED endpoint=%s" % [mode.to_upper(), endpoint])


func _on_game_connected(player_id: String) -> void:
	check(player_id == sm.player_id, "admitted as %s, not %s" % [player_id, sm.player_id])
	games_joined += 1
	say("%s_IN_GAME player=%s n=%d" % [mode.to_upper(), player_id, games_joined])


func _on_game_disconnected() -> void:
	say("%s_GAME_DISCONNECTED state=%s" % [mode.to_upper(), sm.session_state()])


func _on_in_progress() -> void:
	in_progress_seen = check(sm.session_state() == "IN_PROGRESS", "mirror in progress")
	say("%s_IN_PROGRESS" % mode.to_upper())


func _on_reconnecting(attempt: int, delay: float) -> void:
	reconnecting_seen = true
	say("%s_RECONNECTING attempt=%d delay=%.2f" % [mode.to_upper(), attempt, delay])


func _on_reconnected(resumed: bool) -> void:
	if not check(resumed, "resume refused"):
		return
	if not check(sm.session.get("session_id", "") == session_id, "resumed into another session"):
		return
	say("%s_RESUMED session=%s state=%s" % [mode.to_upper(), session_id, sm.session_state()])


func _on_closed(reason: String) -> void:
	if not check(reason == "completed", "session_closed %s" % reason):
		return
	if not check(in_progress_seen and not sm.in_session(), "closed before in progress"):
		return
	if args.get("lobby-cut") == "yes" and not check(reconnecting_seen, "never reconnected"):
		return
	pass_with("%s_OK" % mode.to_upper())


func _on_disconnected(code: int, reason: String) -> void:
	fail("lobby socket gave up: %d %s" % [code, reason])


func _on_gave_up(reason: String) -> void:
	# After session_closed the MultiplayerManager gives up by design.
	if reason != "session_closed":
		fail("game connection gave up: %s" % reason)


func _on_game_failed(reason: String) -> void:
	say("%s_GAME_ATTEMPT_FAILED %s" % [mode.to_upper(), reason])
