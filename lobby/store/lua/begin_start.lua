-- ARGV: 3 player_id
local pid = ARGV[3]
local s, refused = hosted_waiting_session(pid)
if refused then return fail(refused) end
change_state(s, 'CONNECTING')
s.started = NOW
-- Seats of a starting session are held for its life, so pending holds end here.
for _, m in ipairs(s.members) do redis.call('ZREM', HOLDS, m.id) end
save(skey(s.id), s)
return ok(s)
