# The dedicated game server: ENet on --port, registers through the lobby's HTTP
# API (no AWS SDK), heartbeats and learns its session from the heartbeat, admits
# players with their join tickets through LobbyGameServer, which reports
# in-progress once all are in. It reports the match complete when the suite
# creates --done-file (and passes once it has registered again for its next
# match), or shuts down mid-match (a server restart) on --stop-file.
extends "res://tests/harness.gd"

var gs: Node
var complete_sent := false
var in_progress_ok := false
var registrations := 0


func setup() -> void:
	gs = load("res://addons/lobby/lobby_game_server.gd").new()
	gs.name = "LobbyGameServer"
	gs.lobby_url = args.get("lobby", "")
	gs.server_key = args.get("key", "")
	gs.server_id = args.get("server-id", "")
	gs.instance_id = args.get("instance-id", "")
	gs.heartbeat_interval = float(args.get("heartbeat", "5"))
	root.add_child(gs)
	gs.connect("player_admitted", self, "_on_admitted")
	gs.connect("player_refused", self, "_on_refused")
	gs.connect("player_disconnected", self, "_on_player_gone")
	gs.connect("session_loaded", self, "_on_session_loaded")
	gs.connect("reported", self, "_on_reported")
	gs.connect("registered", self, "_on_registered")
	gs.connect("session_assigned", self, "_on_assigned")
	gs.connect("match_ended", self, "_on_match_ended")
	var port := int(args.get("port", "0"))
	gs.connection_info = "127.0.0.1:%d" % port
	if not check(gs.serve(port) == OK, "ENet server on port %d" % port):
		return
	say("SERVER_LISTENING port=%d" % port)
	gs.register()


func step(_delta: float) -> void:
	if in_progress_ok and args.has("stop-file") and File.new().file_exists(args["stop-file"]):
		# Closing sends every peer a disconnect, so the players notice at once.
		gs.peer.close_connection()
		pass_with("SERVER_STOPPED")
	elif in_progress_ok and not complete_sent and File.new().file_exists(args.get("done-file")):
		complete_sent = true
		gs.report_complete()


func _on_session_loaded(session: Dictionary) -> void:
	say("SERVER_SESSION session=%s players=%d" % [session["session_id"], session["players"].size()])


func _on_admitted(peer_id: int, player_id: String) -> void:
	check(gs.is_admitted(peer_id) and gs.player_of(peer_id) == player_id, "admitted state")
	say("SERVER_ADMITTED player=%s" % player_id)


func _on_player_gone(_peer_id: int, player_id: String) -> void:
	say("SERVER_PLAYER_GONE player=%s" % player_id)


func _on_refused(_peer_id: int, reason: String) -> void:
	say("SERVER_REFUSED reason=%s" % reason)


func _on_reported(call: String, ok: bool, status: int) -> void:
	if call == "heartbeat":
		return  # several a second: SERVER_ASSIGNED says what they brought
	say("SERVER_REPORTED call=%s ok=%s status=%d" % [call, ok, status])
	if call == "in-progress":
		in_progress_ok = check(ok, "in-progress report failed")
	elif call == "complete":
		check(ok, "complete report failed")


func _on_registered(ok: bool, status: int) -> void:
	if not check(ok, "registration refused with %d" % status):
		return
	registrations += 1
	say("SERVER_REGISTERED n=%d status=%d" % [registrations, status])
	# --registrations=N: pass once registered N times (a session that failed).
	var wanted := int(args.get("registrations", "0"))
	if complete_sent or (wanted > 0 and registrations >= wanted):
		pass_with("SERVER_OK")


func _on_match_ended() -> void:
	say("SERVER_MATCH_ENDED")


func _on_assigned(session: Dictionary) -> void:
	say("SERVER_ASSIGNED session=%s" % session["session_id"])
