-- KEYS: 1 the player's key. ARGV: 3 session id, 4 'forget' to delete a player
-- who has no socket (a member released by a kick, a timeout or the session's
-- end; their resume token dies with the seat), '' to keep them.
-- Clears the player's pointer if it still names that session. Returns 1 if it did.
local p = load(KEYS[1])
if not p or p.sid ~= ARGV[3] then return 0 end
if ARGV[4] == 'forget' and p.conn == '' then
  redis.call('DEL', KEYS[1])
  return 1
end
p.sid = nil
save(KEYS[1], p)
return 1
