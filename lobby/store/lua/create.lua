-- ARGV: 3 player_id, 4 session_id, 5 name, 6 max_players, 7 password hash JSON or '',
-- 8 attributes JSON, 9 visibility, 10 join code (reserved by the caller under its
-- own key), 11 indexed attribute keys (JSON list, or '*' for all), 12 start rule
-- ('' for host), 13 min players ('' for 1), 14 the player's name, 15 token hash,
-- 16 conn (from the player's record, read by p_intent.lua).
local pid, sid = ARGV[3], ARGV[4]
if not (local_keys(session_keys(sid))
    and index_local({}, tokens_of(cjson.decode(ARGV[8]), ARGV[11]))) then
  return MIGRATING
end
if redis.call('EXISTS', skey(sid)) == 1 then return fail('INTERNAL') end
local pw = NULL
if ARGV[7] ~= '' then pw = cjson.decode(ARGV[7]) end
local pname = ARGV[14]
local name = ARGV[5]
if name == '' then name = pname .. "'s game" end
local s = {
  id = sid, name = name, host = pid, state = 'WAITING', max = tonumber(ARGV[6]),
  members = {{id = pid, name = pname, joined = NOW, tokh = ARGV[15], attrs = {}}}, pw = pw,
  server_id = NULL, endpoint = NULL, seq = redis.call('INCR', SEQ), v = 1, started = NULL,
  created = NOW, updated = NOW, active = NOW,
  attrs = cjson.decode(ARGV[8]), vis = ARGV[9], locked = false, code = ARGV[10], bans = {},
  ix = {},
}
-- Defaults are left out of the record, as in records written before they existed.
if ARGV[12] ~= '' and ARGV[12] ~= 'host' then s.rule = ARGV[12] end
if ARGV[13] ~= '' and tonumber(ARGV[13]) > 1 then s.minp = tonumber(ARGV[13]) end
set_seat_conn(s, pid, ARGV[16])
reindex(s, ARGV[11])
save(skey(sid), s)
redis.call('ZADD', DEADLINES, NOW, sid)
return ok(s)
