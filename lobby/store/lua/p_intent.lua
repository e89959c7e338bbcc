-- KEYS: 1 the player's key. ARGV: 3 session id the player is about to create or join.
-- The pointer is written before the session changes: a crash in between leaves
-- a pointer to a session that does not list the player, which every reader
-- checks against the member list. Returns {'OK', name, token hash, conn},
-- {'BUSY', other session id} (the caller checks whether the player is still a
-- member there: if not, it clears the pointer and asks again), or an error.
local p = load(KEYS[1])
if not p then return fail('NOT_AUTHENTICATED') end
if p.sid and p.sid ~= ARGV[3] then return {'BUSY', p.sid} end
if not p.sid then
  p.sid = ARGV[3]
  save(KEYS[1], p)
end
return {'OK', p.name, p.tokh, p.conn}
