-- ARGV: 3 player_id, 4 '1' (ready) or '0'. WAITING only; setting the flag it
-- already has changes nothing and publishes nothing.
local pid, want = ARGV[3], ARGV[4] == '1'
local p = load(pkey(pid))
if not p then return fail('NOT_AUTHENTICATED') end
if not p.sid then return fail('NOT_IN_SESSION') end
local s = load(skey(p.sid))
local i = s and member_index(s, pid)
if not i then return fail('NOT_IN_SESSION') end
if s.state ~= 'WAITING' then return fail('SESSION_NOT_WAITING') end
local m = s.members[i]
if (m.ready == true) == want then return ok(s) end
if want then m.ready = true else m.ready = nil end
touch(s)
s.active = NOW
save(skey(s.id), s)
publish(s, {e = 'player_ready', player_id = pid, ready = want})
return ok(s)
