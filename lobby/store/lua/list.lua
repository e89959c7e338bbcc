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

-- Which of `ids` are still listed and meet every driver, from the indexes alone
-- (they hold exactly that), one ZMSCORE per index for the whole chunk: only a
-- snapshot's candidates (later pages of a player-count sort) need it; the others
-- come straight from an index lookup in this script. An attribute index holds
-- only listed sessions, so `open` is asked only when there is no driver.
local function indexed_matches(ids)
  local ok = {}
  for j = 1, #ids do ok[j] = true end
  if #drivers == 0 then
    local listed = redis.call('ZMSCORE', OPEN, unpack(ids))
    for j = 1, #ids do ok[j] = listed[j] ~= false end
  end
  for _, c in ipairs(drivers) do
    local values = c[3]
    if c[2] == 'eq' then values = {c[3]} end
    local found = {}
    for _, w in ipairs(values) do
      local scores = redis.call('ZMSCORE', ixkey(attr_token(c[1], w)), unpack(ids))
      for j = 1, #ids do
        if scores[j] ~= false then found[j] = true end
      end
    end
    for j = 1, #ids do ok[j] = ok[j] and found[j] == true end
  end
  return ok
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

-- Walks the candidates in order, in chunks: chunk(from, n) gives up to n ids from
-- the from-th on (fewer: no more after them), pos(i) the cursor just after the
-- i-th; at most `budget` candidates. `exact`: the candidates come from an index
-- lookup made in this script, so only the record conditions are left to check.
-- A chunk is read with one MGET (and, not exact, one ZMSCORE per index) rather
-- than a call per candidate. Returns the next page's cursor.
local out = {}
-- Each returned record's cursor position: a merge of several buckets' pages
-- (redis.py) resumes a bucket just after the last of its records it used.
local outpos = {}
local function walk(chunk, pos, exact)
  local last = nil
  local seen = 0
  while seen < budget do
    -- One match more than the page needs tells that there is a next page.
    local n = math.min(budget - seen, math.max(limit + 1 - #out, seen))
    local ids = chunk(seen + 1, n)
    if #ids == 0 then return nil end
    local ok = nil
    if not exact then ok = indexed_matches(ids) end
    local keys = {}
    for j, sid in ipairs(ids) do
      if exact or ok[j] then table.insert(keys, skey(sid)) end
    end
    local raws = {}
    if #keys > 0 then raws = redis.call('MGET', unpack(keys)) end
    local k = 0
    for j = 1, #ids do
      if exact or ok[j] then
        k = k + 1
        local raw = raws[k]
        if raw and record_match(raw) then
          if #out == limit then return last end
          table.insert(out, raw)
          table.insert(outpos, tostring(pos(seen + j)))
          last = pos(seen + j)
        end
      end
    end
    seen = seen + #ids
    if #ids < n then return nil end -- no more candidates: the last page
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
  local bound = q.seq and ('(' .. q.seq) or (desc and '+inf' or '-inf')
  local scores = {}
  local function chunk(from, n)
    local hits
    if desc then
      hits = redis.call('ZREVRANGEBYSCORE', src, bound, '-inf', 'WITHSCORES', 'LIMIT', from - 1, n)
    else
      hits = redis.call('ZRANGEBYSCORE', src, bound, '+inf', 'WITHSCORES', 'LIMIT', from - 1, n)
    end
    local ids = {}
    for j = 1, #hits, 2 do
      table.insert(ids, hits[j])
      scores[from + (j - 1) / 2] = hits[j + 1]
    end
    return ids
  end
  -- src is `open` or the drivers' intersection made just above: exact candidates.
  nxt = walk(chunk, function(i) return scores[i] end, true)
else
  -- Player counts change under a paging client: the order is taken once, on the
  -- first page, over the first snap_max candidates, and kept for snap_ms (a list).
  local token, offset, chunk, exact
  local ids = {}
  if q.snap then
    local key = B .. 'snap:' .. q.snap
    if redis.call('EXISTS', key) == 0 then return {'ERR', 'CURSOR_EXPIRED'} end
    token, offset, exact = q.snap, q.offset, false
    -- The snapshot's sessions may have changed since: each is checked again.
    chunk = function(from, n)
      local at = offset + from - 1
      return redis.call('LRANGE', key, at, at + n - 1)
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
    token, offset, exact = q.token, 0, true
    chunk = function(from, n)
      local part = {}
      for i = from, math.min(#ids, from + n - 1) do table.insert(part, ids[i]) end
      return part
    end
  end
  local pos = walk(chunk, function(i) return offset + i end, exact)
  if pos then nxt = 'p' .. token .. '.' .. pos end
  -- `keep`: a merge of several buckets' pages (redis.py) may resume this bucket
  -- inside this page, so its order is kept even when the page is its last.
  if (pos or q.keep) and not q.snap and #ids > 0 then
    local key = B .. 'snap:' .. token
    redis.call('RPUSH', key, unpack(ids))
    redis.call('PEXPIRE', key, q.snap_ms)
  end
end
-- DEL, not UNLINK: handing a large set to the lazy-free thread cost ~750 µs a call
-- on this 2-core machine under load (docs/benchmarks.md), freeing it ~60 µs.
for _, k in ipairs(temps) do redis.call('DEL', k) end
return {nxt or '', out, outpos}
