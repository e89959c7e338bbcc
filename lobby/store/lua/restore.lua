-- ARGV: 3 new epoch, 4 JSON list of session records, 5 hold ms.
-- Rebuilds an emptied Redis from persisted sessions, once: the first node to
-- get here sets the epoch, later callers only learn it.
local current = redis.call('GET', P .. 'epoch')
if current then return {current, 0} end
local function start_time(s)
  if type(s.started) == 'number' then return s.started end
  return 0
end
local restored = 0
local maxseq = tonumber(redis.call('GET', SEQ) or '0')
for _, s in ipairs(cjson.decode(ARGV[4])) do
  if redis.call('EXISTS', skey(s.id)) == 0 and #s.members > 0 then
    save(skey(s.id), s)
    index_open(s)
    if type(s.code) == 'string' then redis.call('HSET', CODES, s.code, s.id) end
    redis.call('ZADD', DEADLINES, NOW, s.id)
    if s.seq > maxseq then maxseq = s.seq end
    if type(s.server_id) == 'string' then
      -- Records may disagree on a reused server; the latest start is the one it
      -- served before Redis was lost, as finish_start would have left it.
      local other = redis.call('HGET', SERVERS, s.server_id)
      local held = other and load(skey(other))
      if not held or start_time(held) <= start_time(s) then
        redis.call('HSET', SERVERS, s.server_id, s.id)
      end
    end
    for _, m in ipairs(s.members) do
      if redis.call('EXISTS', pkey(m.id)) == 0 and m.tokh then
        save(pkey(m.id), {id = m.id, name = m.name, tokh = m.tokh, conn = '', sid = s.id})
        if s.state == 'WAITING' then redis.call('ZADD', HOLDS, NOW + tonumber(ARGV[5]), m.id) end
      end
    end
    restored = restored + 1
  end
end
redis.call('SET', SEQ, maxseq)
redis.call('SET', P .. 'epoch', ARGV[3])
return {ARGV[3], restored}
