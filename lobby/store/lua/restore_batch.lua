-- ARGV: 3 owner token, 4 lease ms, 5 hold ms, 6 JSON list of session records.
-- One bounded batch of the rebuild of an emptied Redis, by the lease owner
-- (restore_lease.lua); renews the lease. Returns the sessions restored, or -1
-- when the lease is not (or no longer) the caller's or the rebuild is done.
-- Batches keep every call short: one call with all sessions blocked Redis for
-- seconds (20,000 sessions: 2.3 s) and would hit the script time limit.
if redis.call('GET', P .. 'epoch') or redis.call('GET', P .. 'rebuild') ~= ARGV[3] then
  return -1
end
redis.call('PEXPIRE', P .. 'rebuild', tonumber(ARGV[4]))
local function start_time(s)
  if type(s.started) == 'number' then return s.started end
  return 0
end
local restored = 0
local maxseq = tonumber(redis.call('GET', SEQ) or '0')
for _, s in ipairs(cjson.decode(ARGV[6])) do
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
return restored
