-- ARGV: 3 owner token, 4 lease ms, 5 hold ms, 6 JSON list of session records.
-- One bounded batch of the rebuild of an emptied bucket, by the lease owner
-- (restore.lua 'take'); renews the lease. Returns {restored count, JSON list of
-- the restored records' ids}, or {-1} when the lease is not (or no longer) the
-- caller's or the rebuild is done ({-2} while the bucket's slot is migrating:
-- nothing written, the caller tries again). The caller then writes the members' player
-- records and the code and server keys (slots of their own).
-- Batches keep every call short: one call with all sessions blocked Redis for
-- seconds (20,000 sessions: 2.3 s) and would hit the script time limit.
local LEASE = B .. 'rebuild'
if not local_keys({EPOCH, LEASE, SEQ, OPEN, OPENP, DEADLINES, HOLDS}) then return {-2} end
if redis.call('GET', EPOCH) or redis.call('GET', LEASE) ~= ARGV[3] then return {-1} end
redis.call('PEXPIRE', LEASE, tonumber(ARGV[4]))
local restored = {}
local maxseq = tonumber(redis.call('GET', SEQ) or '0')
local batch = cjson.decode(ARGV[6])
-- Every key the batch touches, checked at once (one EXISTS is far cheaper than
-- one per session: a batch must stay well under Redis' slow-call threshold).
local touched = {EPOCH}
for _, s in ipairs(batch) do
  for _, k in ipairs({skey(s.id), chatkey(s.id), chatmetakey(s.id)}) do table.insert(touched, k) end
  for token in pairs(s.ix or {}) do table.insert(touched, ixkey(token)) end
end
for i = 1, #touched, 1000 do
  if not local_keys({unpack(touched, i, math.min(i + 999, #touched))}) then return {-2} end
end
for _, s in ipairs(batch) do
  if redis.call('EXISTS', skey(s.id)) == 0 and #s.members > 0 then
    save(skey(s.id), s)
    index_open(s)
    redis.call('ZADD', DEADLINES, NOW, s.id)
    if s.seq > maxseq then maxseq = s.seq end
    -- No seat has a socket until its player resumes (or its node rebinds it);
    -- a member persisted without a token hash can only come back by the latter.
    if s.state == 'WAITING' then
      for _, m in ipairs(s.members) do
        if m.tokh then redis.call('ZADD', HOLDS, NOW + tonumber(ARGV[5]), held(s.id, m.id)) end
      end
    end
    table.insert(restored, s.id)
  end
end
redis.call('SET', SEQ, maxseq)
return {#restored, cjson.encode(restored)}
