-- ARGV: 3 player_id, 4 session_id, 5 name, 6 max_players, 7 password hash JSON or '',
-- 8 attributes JSON, 9 visibility, 10 JSON list of candidate join codes,
-- 11 indexed attribute keys (JSON list, or '*' for all), 12 start rule ('' for host),
-- 13 min players ('' for 1)
local pid, sid = ARGV[3], ARGV[4]
local p = load(pkey(pid))
if not p then return fail('NOT_AUTHENTICATED') end
if p.sid then return fail('ALREADY_IN_SESSION') end
if redis.call('EXISTS', skey(sid)) == 1 then return fail('INTERNAL') end
-- The first candidate code no live session holds (the caller draws them at random).
local code = nil
for _, c in ipairs(cjson.decode(ARGV[10])) do
  if redis.call('HEXISTS', CODES, c) == 0 then
    code = c
    break
  end
end
if not code then return fail('INTERNAL') end
local pw = NULL
if ARGV[7] ~= '' then pw = cjson.decode(ARGV[7]) end
local name = ARGV[5]
if name == '' then name = p.name .. "'s game" end
local s = {
  id = sid, name = name, host = pid, state = 'WAITING', max = tonumber(ARGV[6]),
  members = {{id = pid, name = p.name, joined = NOW, tokh = p.tokh, attrs = {}}}, pw = pw,
  server_id = NULL, endpoint = NULL, seq = redis.call('INCR', SEQ), v = 1, started = NULL,
  created = NOW, updated = NOW, active = NOW,
  attrs = cjson.decode(ARGV[8]), vis = ARGV[9], locked = false, code = code, bans = {}, ix = {},
}
-- Defaults are left out of the record, as in records written before they existed.
if ARGV[12] ~= '' and ARGV[12] ~= 'host' then s.rule = ARGV[12] end
if ARGV[13] ~= '' and tonumber(ARGV[13]) > 1 then s.minp = tonumber(ARGV[13]) end
redis.call('HSET', CODES, code, sid)
reindex(s, ARGV[11])
save(skey(sid), s)
redis.call('ZADD', DEADLINES, NOW, sid)
p.sid = sid
save(pkey(pid), p)
return ok(s)
