class_name LobbyRequest
extends RefCounted
## One request sent to the lobby by SessionManager.
##
## It completes exactly once: with the server's reply, or with a reply made by the
## client (error code TIMEOUT, DISCONNECTED or NOT_CONNECTED) of the same shape:
## {"type", "id", "ok": false, "error": {"code", "message"}}.
## `completed` is never emitted inside the call that made the request, so
## `var reply: Dictionary = await SessionManager.ping().completed` never misses it.

## Emitted once, with the reply (the same Dictionary as `reply`).
signal completed(reply: Dictionary)

## The request's type ("hello", "create_session", ...).
var type: String = ""
## The request's id on this socket (echoed by the server in the reply).
var id: int = 0
## True once the reply (or a client-made error) is known.
var done: bool = false
## The server's reply, or a client-made error reply; {} until done.
var reply: Dictionary = {}


func _init(request_type: String = "", request_id: int = 0) -> void:
	type = request_type
	id = request_id


## True when the request is done and the server answered "ok": true.
func ok() -> bool:
	return done and reply.get("ok", false) == true


## The error code ("SESSION_FULL", "TIMEOUT", ...), or "" when ok or not done yet.
func error_code() -> String:
	var error: Variant = reply.get("error")
	if ok() or not (error is Dictionary):
		return ""
	return str(error.get("code", ""))


## The error's human-readable message, or "" when ok or not done yet.
func error_message() -> String:
	var error: Variant = reply.get("error")
	if ok() or not (error is Dictionary):
		return ""
	return str(error.get("message", ""))
