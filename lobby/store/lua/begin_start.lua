-- ARGV: 3 player_id
local pid = ARGV[3]
local p = load(pkey(pid))
if not p then return fail('NOT_AUTHENTICATED') end
if not p.sid then return fail('NOT_IN_SESSION') end
local s = load(skey(p.sid))
if not s then return fail('NOT_IN_SESSION') end
if s.host ~= pid then return fail('NOT_HOST') end
if s.state ~= 'WAITING' then return fail('SESSION_NOT_WAITING') end
s.state = 'CONNECTING'
touch(s)
s.active = NOW
s.started = NOW
redis.call('ZADD', DEADLINES, NOW, s.id)
index_open(s)
-- Seats of a starting session are held for its life, so pending holds end here.
for _, m in ipairs(s.members) do redis.call('ZREM', HOLDS, m.id) end
save(skey(s.id), s)
return ok(s)
