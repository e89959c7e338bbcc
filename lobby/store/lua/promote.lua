-- ARGV: 3 host player_id, 4 new host's player_id, 5 session_id. Host only, any state.
local pid, target = ARGV[3], ARGV[4]
local s, refused = hosted_session(ARGV[5], pid)
if refused then return fail(refused) end
if target == pid then return fail('PROMOTE_SELF') end
if not member_index(s, target) then return fail('PLAYER_NOT_IN_SESSION') end
s.host = target
touch(s)
save(skey(s.id), s)
publish(s, {e = 'host_changed', host_id = target})
return ok(s)
