-- ARGV: 3 player_id, 4 text, 5 rate window ms, 6 messages per window, 7 log length,
-- 8 session_id.
-- One call checks membership and the sender's rate, numbers the message, keeps
-- it in the log and publishes it; the event text embeds the message text as
-- encoded once here.
local pid = ARGV[3]
local sid = ARGV[8]
local LOG, META = chatkey(sid), chatmetakey(sid)
if not local_keys(session_keys(sid)) then return MIGRATING end
local s = load(skey(sid))
local i = s and member_index(s, pid)
if not i then return fail('NOT_IN_SESSION') end
local window, most = tonumber(ARGV[5]), tonumber(ARGV[6])
local field = 'r:' .. pid
local recent = {}
local times = redis.call('HGET', META, field)
if times then
  for t in string.gmatch(times, '%d+') do
    if tonumber(t) > NOW - window then table.insert(recent, t) end
  end
end
if #recent >= most then
  return {'ERR', 'RATE_LIMITED', tostring(tonumber(recent[#recent - most + 1]) + window - NOW)}
end
table.insert(recent, ARGV[2])
local seq = redis.call('HINCRBY', META, 'seq', 1)
redis.call('HSET', META, field, table.concat(recent, ','))
local msg = cjson.encode({
  seq = seq, player_id = pid, name = s.members[i].name, text = ARGV[4], sent_at = NOW / 1000,
})
redis.call('RPUSH', LOG, msg)
redis.call('LTRIM', LOG, -tonumber(ARGV[7]), -1)
redis.call('SPUBLISH', evkey(s.id),
  '{"e":"chat_message","sid":' .. cjson.encode(s.id) .. ',"m":' .. msg .. '}')
return {'OK', msg}
