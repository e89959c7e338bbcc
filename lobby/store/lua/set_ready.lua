-- ARGV: 3 player_id, 4 '1' (ready) or '0', 5 session_id. WAITING only; setting the flag it
-- already has changes nothing and publishes nothing.
local pid, want = ARGV[3], ARGV[4] == '1'
local s, refused, i = member_session(ARGV[5], pid)
if refused then return fail(refused) end
if s.state ~= 'WAITING' then return fail('SESSION_NOT_WAITING') end
local m = s.members[i]
if (m.ready == true) == want then return ok(s) end
if want then m.ready = true else m.ready = nil end
touch(s)
s.active = NOW
save(skey(s.id), s)
publish(s, {e = 'player_ready', player_id = pid, ready = want})
return ok(s)
