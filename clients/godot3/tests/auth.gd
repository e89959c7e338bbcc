# --auth jwt: hello(name, token) with the backend's token (--token), after a
# refused one (--bad); the reply's player id is the token's sub.
extends "res://tests/harness.gd"

var sm: Node


func setup() -> void:
	sm = add_lobby_nodes(false)[0]
	connect_lobby(sm)


func _on_connected() -> void:
	var refused = yield(sm.hello("godot", args.get("bad", "")), "completed")
	var error = refused.get("error", {})
	say("REFUSED code=%s message=%s" % [error.get("code", ""), error.get("message", "")])
	var reply = yield(sm.hello("godot", args.get("token", "")), "completed")
	if not check(reply.get("ok", false), "hello with token: %s" % reply):
		return
	say("HELLO player=%s name=%s kept=%s" % [
		sm.player_id, sm.player_name, sm.auth_token == args.get("token", "")])
	pass_with("AUTH_OK")
