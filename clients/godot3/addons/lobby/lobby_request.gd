# One request to the lobby: completes exactly once with the server's reply, or
# with a client-made error reply (TIMEOUT, DISCONNECTED, NOT_CONNECTED).
#   var reply = yield(SessionManager.create_session("Room", 4), "completed")
class_name LobbyRequest
extends Reference

signal completed(reply)

var type := ""
var id := 0
var done := false
var reply := {}
# OS.get_ticks_msec() after which the request times out (0: not sent).
var deadline_msec := 0


func ok() -> bool:
	return done and bool(reply.get("ok", false))


func error_code() -> String:
	var err = reply.get("error")
	if typeof(err) == TYPE_DICTIONARY:
		return str(err.get("code", ""))
	return ""


func error_message() -> String:
	var err = reply.get("error")
	if typeof(err) == TYPE_DICTIONARY:
		return str(err.get("message", ""))
	return ""


# Called by the SessionManager only; later calls are ignored so that a late
# reply cannot complete a request that already timed out.
func complete_with(result: Dictionary) -> bool:
	if done:
		return false
	done = true
	reply = result
	emit_signal("completed", result)
	return true
