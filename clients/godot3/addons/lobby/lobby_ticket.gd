# Join tickets (protocol.md, join_ticket): v1.SESSION_ID.PLAYER_ID.EXPIRES_AT.SIG,
# SIG = hex HMAC-SHA256(server key, "v1.SESSION_ID.PLAYER_ID.EXPIRES_AT").
# Godot 3.2 has no HMAC, so it is built here from HashingContext (RFC 2104).
class_name LobbyTicket
extends Reference

const BLOCK_SIZE := 64


static func verify(ticket: String, key: String, now_unix: int) -> Dictionary:
	var result := {
		"ok": false, "session_id": "", "player_id": "", "expires_at": 0, "error": "malformed"
	}
	var parts := ticket.split(".")
	if parts.size() != 5 or parts[0] != "v1" or not _is_digits(parts[3]):
		return result
	if parts[1].empty() or parts[2].empty() or key.empty():
		return result
	var message := "%s.%s.%s.%s" % [parts[0], parts[1], parts[2], parts[3]]
	if not constant_time_equals(hmac_sha256_hex(key, message), parts[4]):
		result["error"] = "bad_signature"
		return result
	result["session_id"] = parts[1]
	result["player_id"] = parts[2]
	result["expires_at"] = int(parts[3])
	if int(parts[3]) <= now_unix:
		result["error"] = "expired"
		return result
	result["ok"] = true
	result["error"] = ""
	return result


static func _is_digits(text: String) -> bool:
	if text.empty() or text.length() > 18:
		return false
	for i in range(text.length()):
		if text.ord_at(i) < 48 or text.ord_at(i) > 57:
			return false
	return true


static func sign(key: String, session_id: String, player_id: String, expires_at: int) -> String:
	var message := "v1.%s.%s.%d" % [session_id, player_id, expires_at]
	return message + "." + hmac_sha256_hex(key, message)


static func hmac_sha256_hex(key: String, message: String) -> String:
	var k := key.to_utf8()
	if k.size() > BLOCK_SIZE:
		k = sha256(k)
	var inner := PoolByteArray()
	var outer := PoolByteArray()
	for i in range(BLOCK_SIZE):
		var b := 0
		if i < k.size():
			b = k[i]
		inner.append(b ^ 0x36)
		outer.append(b ^ 0x5c)
	inner.append_array(message.to_utf8())
	outer.append_array(sha256(inner))
	return sha256(outer).hex_encode()


static func sha256(data: PoolByteArray) -> PoolByteArray:
	var ctx := HashingContext.new()
	ctx.start(HashingContext.HASH_SHA256)
	ctx.update(data)
	return ctx.finish()


# Compares every character whatever the first difference, so the time taken
# does not tell a forger how much of a signature was right.
static func constant_time_equals(a: String, b: String) -> bool:
	if a.length() != b.length():
		return false
	var diff := 0
	for i in range(a.length()):
		diff |= a.ord_at(i) ^ b.ord_at(i)
	return diff == 0
