# Lobby data in the engine: --mode=host creates an unlisted room with attributes
# and prints its join code; --mode=guest joins by that code (typed in lower case
# with a dash), then follows the host's settings edit through its mirror.
extends "res://tests/harness.gd"

var sm: Node
var mode := ""
var updates_seen := 0


func setup() -> void:
	mode = args.get("mode", "")
	sm = add_lobby_nodes(false)[0]
	sm.request_timeout = 5.0
	sm.connect("player_joined", self, "_on_player_joined")
	sm.connect("session_updated", self, "_on_session_updated")
	sm.connect("player_updated", self, "_on_player_updated")
	connect_lobby(sm)


func _on_connected() -> void:
	var reply = yield(sm.hello(mode), "completed")
	if not check(reply.get("ok", false), "hello: %s" % reply):
		return
	if mode == "host":
		reply = yield(sm.create_session("Dust CTF", 4, "", {"mode": "ctf", "map": "dust"},
				"unlisted"), "completed")
		if not check(reply.get("ok", false), "create: %s" % reply):
			return
		say("HOST_CODE code=%s visibility=%s map=%s" % [sm.session["join_code"],
				sm.session["visibility"], sm.session["attributes"]["map"]])
		return
	# A full page of sessions with every attribute set: more than the engine's
	# default 64 KiB inbound buffer.
	reply = yield(sm.list_sessions(100, "", {"sort": "oldest"}), "completed")
	if not check(reply.get("ok", false), "list_sessions: %s" % reply):
		return
	say("GUEST_LISTED sessions=%d attributes=%d" % [reply["sessions"].size(),
			reply["sessions"][0]["attributes"].size()])
	var code: String = args.get("code", "")
	var typed := code.substr(0, 3).to_lower() + "-" + code.substr(3, 3).to_lower()
	reply = yield(sm.join_by_code(typed), "completed")
	if not check(reply.get("ok", false), "join_by_code: %s" % reply):
		return
	say("GUEST_JOINED session=%s code=%s" % [sm.session["session_id"], sm.session["join_code"]])


# host: the guest is in; edit the settings.
func _on_player_joined(_player_id: String, player_name: String) -> void:
	if mode != "host":
		return
	say("HOST_SAW_JOIN name=%s" % player_name)
	var reply = yield(sm.update_session({"name": "Aztec CTF", "max_players": 6.0,
			"attributes": {"map": "aztec", "mode": null}, "locked": true}), "completed")
	if not check(reply.get("ok", false), "update_session: %s" % reply):
		return
	say("HOST_UPDATED name=%s locked=%s" % [sm.session["name"], sm.session["locked"]])


# guest: the mirror already holds the change when the signal comes.
func _on_session_updated(session: Dictionary) -> void:
	if mode != "guest":
		return
	updates_seen += 1
	var mirrored: Dictionary = sm.session
	if not check(mirrored.get("name", "") == "Aztec CTF", "mirror name: %s" % mirrored):
		return
	if not check(session.get("version", -1) == mirrored.get("version", -2), "signal's session"):
		return
	say("GUEST_MIRROR name=%s max=%d map=%s has_mode=%s locked=%s" % [mirrored["name"],
			int(mirrored["max_players"]), mirrored["attributes"].get("map", ""),
			mirrored["attributes"].has("mode"), mirrored["locked"]])
	var reply = yield(sm.update_player({"team": "red"}), "completed")
	check(reply.get("ok", false), "update_player: %s" % reply)


# both: the guest's own attributes reach every member's mirror.
func _on_player_updated(player_id: String) -> void:
	var players: Array = sm.session.get("players", [])
	for p in players:
		if p["player_id"] == player_id:
			say("%s_PLAYER_UPDATED team=%s" % [mode.to_upper(), p["attributes"].get("team", "")])
			pass_with("%s_OK" % mode.to_upper())
			return
	fail("player_updated about a player not in the mirror")
