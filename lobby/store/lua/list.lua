-- ARGV: 3 query JSON {sort, limit, conds = [[key, op, value], ...], min_free, has_pw,
--   indexed ('*' or a list of keys), token (names a new snapshot), budget, snap_max,
--   snap_ms, keep (see below), and the parsed cursor: seq (number, or false on the first page) or
--   snap (token of an existing snapshot) with offset}.
-- Returns {next cursor or '', list of records JSON, their positions} or {'ERR', code}.
-- Mirrors MemoryStore.list_sessions: the same candidates in the same order, so the
-- same pages. Index lookups (eq and in on indexed keys) give the candidates; every
-- other condition is checked on the records a page walks, at most `budget` of them.
local q = cjson.decode(ARGV[3])
if not local_keys({EPOCH, OPEN, OPENP}) then return MIGRATING end
local limit, budget = q.limit, q.budget
local players = q.sort == 'most_players' or q.sort == 'fewest_players'
local desc = q.sort == 'newest' or q.sort == 'most_players'

local indexed = nil
if q.indexed ~= '*' then
  indexed = {}
  for _, k in ipairs(q.indexed) do indexed[k] = true end
end

-- The rules of a match (mirrors search.holds and MemoryStore._matches).
local function same(a, b) return type(a) == type(b) and a == b end
local function holds(attrs, c)
  local v, op, want = attrs[c[1]], c[2], c[3]
  if op == 'eq' then return v ~= nil and same(v, want) end
  if op == 'ne' then return v == nil or not same(v, want) end
  if op == 'in' then
    if v == nil then return false end
    for _, w in ipairs(want) do
      if same(v, w) then return true end
    end
    return false
  end
  if type(v) ~= 'number' then return false end
  if op == 'lt' then return v < want end
  if op == 'le' then return v <= want end
  if op == 'gt' then return v > want end
  return v >= want
end

-- Conditions the indexes answer (eq and in on indexed keys: the drivers), and
-- the rest, which need the record.
local drivers, others = {}, {}
for _, c in ipairs(q.conds) do
  if (c[2] == 'eq' or c[2] == 'in') and (indexed == nil or indexed[c[1]]) then
    table.insert(drivers, c)
  else
    table.insert(others, c)
  end
end
local need_record = #others > 0 or q.min_free ~= NULL or q.has_pw ~= NULL

-- Whether a session is listed and meets every driver, from the indexes alone
-- (they hold exactly that): no record to decode for most candidates.
local function indexed_match(sid)
  if not redis.call('ZSCORE', OPEN, sid) then return false end
  for _, c in ipairs(drivers) do
    local values = c[3]
    if c[2] == 'eq' then values = {c[3]} end
    local found = false
    for _, w in ipairs(values) do
      if redis.call('ZSCORE', ixkey(attr_token(c[1], w)), sid) then
        found = true
        break
      end
    end
    if not found then return false end
  end
  return true
end
local function record_match(raw)
  if not need_record then return true end
  local s = cjson.decode(raw)
  if q.min_free ~= NULL and s.max - #s.members < q.min_free then return false end
  if q.has_pw ~= NULL and (s.pw ~= NULL) ~= q.has_pw then return false end
  local attrs = s.attrs or {}
  for _, c in ipairs(others) do
    if not holds(attrs, c) then return false end
  end
  return true
end

-- Index lookups: one index key per eq driver, a union per in driver.
local temps = {}
local function driver_keys()
  local keys = {}
  for i, c in ipairs(drivers) do
    if c[2] == 'eq' then
      table.insert(keys, ixkey(attr_token(c[1], c[3])))
    else
      local union = B .. 'tmp:' .. q.token .. ':in' .. i
      local args = {union, #c[3]}
      for _, w in ipairs(c[3]) do table.insert(args, ixkey(attr_token(c[1], w))) end
      redis.call('ZUNIONSTORE', unpack(args))
      table.insert(temps, union)
      table.insert(keys, union)
    end
  end
  return keys
end
-- The intersection of the drivers (and `scored`, weight 1, whose scores it keeps).
local function intersect(dst, scored, keys)
  local args = {dst, #keys + 1, scored}
  for _, k in ipairs(keys) do table.insert(args, k) end
  table.insert(args, 'WEIGHTS')
  table.insert(args, 1)
  for _ = 1, #keys do table.insert(args, 0) end
  redis.call('ZINTERSTORE', unpack(args))
end

-- Walks the candidates in order: at(i) is the i-th id (nil past the last; at most
-- `budget`), pos(i) the cursor just after it. Returns the next page's cursor.
local out = {}
-- Each returned record's cursor position: a merge of several buckets' pages
-- (redis.py) resumes a bucket just after the last of its records it used.
local outpos = {}
local function walk(at, pos)
  local last = nil
  local i = 1
  while i <= budget do
    local sid = at(i)
    if not sid then return nil end -- no more candidates: the last page
    local raw = indexed_match(sid) and redis.call('GET', skey(sid))
    if raw and record_match(raw) then
      if #out == limit then return last end -- one more match: there is a next page
      table.insert(out, raw)
      table.insert(outpos, tostring(pos(i)))
      last = pos(i)
    end
    i = i + 1
  end
  return pos(budget) -- budget spent: go on from here
end

local nxt = nil
if not players then
  -- Creation order: a live walk by seq, which never changes, is stable by itself.
  local src = OPEN
  local keys = driver_keys()
  if #keys > 0 then
    src = B .. 'tmp:' .. q.token
    table.insert(temps, src)
    intersect(src, OPEN, keys)
  end
  -- Candidates are read in growing chunks: most pages need only limit + 1.
  local bound = q.seq and ('(' .. q.seq) or (desc and '+inf' or '-inf')
  local ids, scores, ended = {}, {}, false
  local function at(i)
    while i > #ids and not ended do
      local count = math.min(budget - #ids, math.max(limit + 1, #ids * 4))
      local hits
      if desc then
        hits = redis.call('ZREVRANGEBYSCORE', src, bound, '-inf', 'WITHSCORES', 'LIMIT', #ids, count)
      else
        hits = redis.call('ZRANGEBYSCORE', src, bound, '+inf', 'WITHSCORES', 'LIMIT', #ids, count)
      end
      for j = 1, #hits, 2 do
        table.insert(ids, hits[j])
        table.insert(scores, hits[j + 1])
      end
      if #hits / 2 < count then ended = true end
    end
    return ids[i]
  end
  nxt = walk(at, function(i) return scores[i] end)
else
  -- Player counts change under a paging client: the order is taken once, on the
  -- first page, over the first snap_max candidates, and kept for snap_ms (a list).
  local token, offset, at
  local ids = {}
  if q.snap then
    local key = B .. 'snap:' .. q.snap
    if redis.call('EXISTS', key) == 0 then return {'ERR', 'CURSOR_EXPIRED'} end
    token, offset = q.snap, q.offset
    local ended = false
    at = function(i)
      while i > #ids and not ended do
        local count = math.min(budget - #ids, math.max(limit + 1, #ids * 4))
        local from = offset + #ids
        local chunk = redis.call('LRANGE', key, from, from + count - 1)
        for _, sid in ipairs(chunk) do table.insert(ids, sid) end
        if #chunk < count then ended = true end
      end
      return ids[i]
    end
  else
    local src = OPENP
    local keys = driver_keys()
    if #keys > 0 then
      src = B .. 'tmp:' .. q.token
      table.insert(temps, src)
      intersect(src, OPENP, keys)
    end
    if desc then
      ids = redis.call('ZREVRANGE', src, 0, q.snap_max - 1)
    else
      ids = redis.call('ZRANGE', src, 0, q.snap_max - 1)
    end
    token, offset = q.token, 0
    at = function(i) return ids[i] end
  end
  local pos = walk(at, function(i) return offset + i end)
  if pos then nxt = 'p' .. token .. '.' .. pos end
  -- `keep`: a merge of several buckets' pages (redis.py) may resume this bucket
  -- inside this page, so its order is kept even when the page is its last.
  if (pos or q.keep) and not q.snap and #ids > 0 then
    local key = B .. 'snap:' .. token
    redis.call('RPUSH', key, unpack(ids))
    redis.call('PEXPIRE', key, q.snap_ms)
  end
end
for _, k in ipairs(temps) do redis.call('DEL', k) end
return {nxt or '', out, outpos}
