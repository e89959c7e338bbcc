-- ARGV: 3 player_id
local pid = ARGV[3]
local p = load(pkey(pid))
if not p then return fail('NOT_AUTHENTICATED') end
if not p.sid then return fail('NOT_IN_SESSION') end
local s = load(skey(p.sid))
p.sid = nil
save(pkey(pid), p)
if not s then return fail('NOT_IN_SESSION') end
return outcome(remove_member(s, pid, 'left'))
