# Pieces checked without a game server: endpoint parsing, join tickets against
# ones the lobby's Python code made (--ticket, --expired, --key), a ticket made
# here for the suite to verify, and that requests complete (deferred) even with
# no socket.
extends "res://tests/harness.gd"

const Mm = preload("res://addons/lobby/multiplayer_manager.gd")
const Ticket = preload("res://addons/lobby/lobby_ticket.gd")

var completed_now := false


func setup() -> void:
	for endpoint in ["127.0.0.1:6060", "[::1]:7000", "[2001:db8::5]:65535", "game.example:1",
			"::1:6060", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", ":6060", "[::1]6060",
			"host:port"]:
		say("ENDPOINT %s -> %s" % [endpoint, Mm.parse_endpoint(endpoint)])
	var key: String = args.get("key")
	var now := OS.get_unix_time()
	var ticket: String = args.get("ticket")
	var claims := Ticket.verify(ticket, key, now)
	say("TICKET valid ok=%s session=%s player=%s expires=%d" % [
		claims["ok"], claims["session_id"], claims["player_id"], claims["expires_at"]])
	var parts := ticket.split(".")
	var tampered := "v1.%s.p_someone_else.%s.%s" % [parts[1], parts[3], parts[4]]
	say("TICKET tampered %s" % Ticket.verify(tampered, key, now)["error"])
	say("TICKET wrong_key %s" % Ticket.verify(ticket, key + "x", now)["error"])
	say("TICKET expired %s" % Ticket.verify(args.get("expired"), key, now)["error"])
	say("TICKET garbage %s" % Ticket.verify("v1.a.b", key, now)["error"])
	say("TICKET made %s" % Ticket.sign(key, "s_godot", "p_godot", now + 60))
	_requests_without_socket()


func _requests_without_socket() -> void:
	var sm: Node = add_lobby_nodes(false)[0]
	var req = sm.ping()
	req.connect("completed", self, "_on_ping_completed")
	var sync_completion := completed_now
	var reply = yield(req, "completed")
	if check(not sync_completion and completed_now, "completion must be deferred"):
		say("REQUEST %s %s" % [reply["error"]["code"], req.error_code()])
		_connect_and_hello()


# connect_and_hello ends either way: a lobby nobody answers at fails with a reason
# once the retries run out; a live one answers the hello.
func _connect_and_hello() -> void:
	var nodes: Array = add_lobby_nodes(false)
	var sm: Node = nodes[0]
	sm.max_reconnect_attempts = 1
	sm.reconnect_base_delay = 0.05
	var failed = yield(sm.connect_and_hello(args.get("dead-url"), "nobody"), "completed")
	say("CONNECT dead %s %s" % [failed["error"]["code"], failed["error"]["message"]])
	var live: Node = add_lobby_nodes(false)[0]
	live.persist_token = false
	var reply = yield(live.connect_and_hello(args.get("url"), "unit"), "completed")
	say("CONNECT live ok=%s name=%s state=%s" % [reply["ok"], reply.get("name"),
			live.connection_state])
	# start_session waits longer than other requests: its claim can be throttled.
	var now := OS.get_ticks_msec()
	var ping = live.ping()
	var start = live.start_session()
	say("DEADLINE ping=%d start=%d" % [int(round((ping.deadline_msec - now) / 1000.0)),
			int(round((start.deadline_msec - now) / 1000.0))])
	yield(start, "completed")
	pass_with("UNIT_OK")


func _on_ping_completed(_reply: Dictionary) -> void:
	completed_now = true
