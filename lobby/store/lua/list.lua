-- ARGV: 3 cursor (exclusive upper bound on seq) or '', 4 limit
local limit = tonumber(ARGV[4])
local max = '+inf'
if ARGV[3] ~= '' then max = '(' .. ARGV[3] end
local hits = redis.call('ZREVRANGEBYSCORE', OPEN, max, '-inf', 'WITHSCORES', 'LIMIT', 0, limit + 1)
local n = math.min(#hits / 2, limit)
local out = {}
for i = 1, n do
  local raw = redis.call('GET', skey(hits[2 * i - 1]))
  if raw then table.insert(out, raw) end
end
local nxt = ''
if #hits / 2 > limit then nxt = hits[2 * n] end
return {nxt, out}
