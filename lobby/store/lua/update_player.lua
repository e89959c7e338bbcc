-- ARGV: 3 player_id, 4 attributes update JSON (null deletes a key), 5 attribute limit,
-- 6 session_id.
-- A member sets their own attributes, in any state.
local pid = ARGV[3]
local s, refused, i = member_session(ARGV[6], pid)
if refused then return fail(refused) end
local merged = merge_attrs(s.members[i].attrs, cjson.decode(ARGV[4]), tonumber(ARGV[5]))
if not merged then return fail('TOO_MANY_ATTRIBUTES') end
s.members[i].attrs = merged
touch(s)
save(skey(s.id), s)
publish(s, {e = 'player_updated', player_id = pid})
return ok(s)
