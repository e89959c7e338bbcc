-- ARGV: 3 player_id, 4 session_id, 5 name, 6 max_players, 7 password hash JSON or ''
local pid, sid = ARGV[3], ARGV[4]
local p = load(pkey(pid))
if not p then return fail('NOT_AUTHENTICATED') end
if p.sid then return fail('ALREADY_IN_SESSION') end
if redis.call('EXISTS', skey(sid)) == 1 then return fail('INTERNAL') end
local pw = NULL
if ARGV[7] ~= '' then pw = cjson.decode(ARGV[7]) end
local name = ARGV[5]
if name == '' then name = p.name .. "'s game" end
local s = {
  id = sid, name = name, host = pid, state = 'WAITING', max = tonumber(ARGV[6]),
  members = {{id = pid, name = p.name, joined = NOW, tokh = p.tokh}}, pw = pw,
  server_id = NULL, endpoint = NULL, seq = redis.call('INCR', SEQ), v = 1, started = NULL,
  created = NOW, updated = NOW, active = NOW,
}
save(skey(sid), s)
index_open(s)
redis.call('ZADD', DEADLINES, NOW, sid)
p.sid = sid
save(pkey(pid), p)
return ok(s)
