# A crash-restart: --mode=first says hello, creates a session and quits without
# leaving; --mode=second (same user:// directory) says hello with no token in
# memory and must come back as the same player in the same session.
extends "res://tests/harness.gd"

var sm: Node


func setup() -> void:
	sm = add_lobby_nodes(false)[0]
	connect_lobby(sm)


func _on_connected() -> void:
	if args.get("mode") == "first":
		var reply = yield(sm.hello("carol"), "completed")
		if not check(reply.get("ok", false) and not reply["resumed"], "first hello"):
			return
		reply = yield(sm.create_session("carol's room", 2), "completed")
		if check(reply.get("ok", false), "create"):
			say("FIRST player=%s session=%s" % [sm.player_id, sm.session["session_id"]])
			pass_with("FIRST_OK")
		return
	var again = yield(sm.hello(), "completed")
	if not check(again.get("ok", false) and again["resumed"], "resume: %s" % again):
		return
	say("SECOND player=%s session=%s host=%s state=%s" % [
		sm.player_id, sm.session.get("session_id", ""), sm.is_host(), sm.session_state()])
	pass_with("SECOND_OK")
