-- ARGV: 3 player_id, 4 attributes update JSON (null deletes a key), 5 attribute limit.
-- A member sets their own attributes, in any state.
local pid = ARGV[3]
local p = load(pkey(pid))
if not p then return fail('NOT_AUTHENTICATED') end
if not p.sid then return fail('NOT_IN_SESSION') end
local s = load(skey(p.sid))
if not s then return fail('NOT_IN_SESSION') end
local i = member_index(s, pid)
if not i then return fail('NOT_IN_SESSION') end
local merged = merge_attrs(s.members[i].attrs, cjson.decode(ARGV[4]), tonumber(ARGV[5]))
if not merged then return fail('TOO_MANY_ATTRIBUTES') end
s.members[i].attrs = merged
touch(s)
save(skey(s.id), s)
publish(s, {e = 'player_updated', player_id = pid})
return ok(s)
