class_name LobbyTicket
extends RefCounted
## Offline check of a join ticket, for the dedicated game server.
##
## A ticket is `v1.SESSION_ID.PLAYER_ID.EXPIRES_AT.SIG`: SIG is the lowercase hex
## HMAC-SHA256, keyed with the lobby's server key (UTF-8), of
## `v1.SESSION_ID.PLAYER_ID.EXPIRES_AT` (UTF-8); EXPIRES_AT is Unix seconds.

const VERSION := "v1"
## Unix seconds fit in far fewer digits; more would overflow an int.
const MAX_EXPIRY_DIGITS := 18


## Checks `ticket` with the server key `key` at Unix time `now_unix` (seconds).
## Returns {ok, session_id, player_id, expires_at, error}; error is "" when ok, else
## "malformed" (also when `key` is empty), "bad_signature" or "expired" (the clock is
## at or past EXPIRES_AT). The identity fields are filled only when the signature is
## good.
static func verify(ticket: String, key: String, now_unix: float) -> Dictionary:
	var result := {
		"ok": false, "session_id": "", "player_id": "", "expires_at": 0, "error": "malformed"
	}
	var parts := ticket.split(".")
	if key.is_empty() or not _well_formed(parts):
		return result
	var signed := "%s.%s.%s.%s" % [parts[0], parts[1], parts[2], parts[3]]
	var mac: PackedByteArray = Crypto.new().hmac_digest(
		HashingContext.HASH_SHA256, key.to_utf8_buffer(), signed.to_utf8_buffer()
	)
	if not _same_text(mac.hex_encode(), parts[4]):
		result["error"] = "bad_signature"
		return result
	var expires_at := parts[3].to_int()
	result["session_id"] = parts[1]
	result["player_id"] = parts[2]
	result["expires_at"] = expires_at
	if now_unix >= float(expires_at):
		result["error"] = "expired"
		return result
	result["ok"] = true
	result["error"] = ""
	return result


## Five parts, the first "v1", non-empty ids, the fourth decimal digits only.
static func _well_formed(parts: PackedStringArray) -> bool:
	if parts.size() != 5 or parts[0] != VERSION:
		return false
	if parts[1].is_empty() or parts[2].is_empty():
		return false
	var expiry := parts[3]
	if expiry.is_empty() or expiry.length() > MAX_EXPIRY_DIGITS:
		return false
	for i in expiry.length():
		var c := expiry.unicode_at(i)
		if c < 48 or c > 57:  # not 0-9
			return false
	return true


## Compares two strings in time that depends only on their length, never on where
## they first differ (the expected signature must not leak byte by byte).
static func _same_text(expected: String, received: String) -> bool:
	if expected.length() != received.length():
		return false
	var diff := 0
	for i in expected.length():
		diff = diff | (expected.unicode_at(i) ^ received.unicode_at(i))
	return diff == 0
