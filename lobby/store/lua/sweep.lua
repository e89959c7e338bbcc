-- ARGV: 3 limit, 4 idle ms (WAITING), 5 connecting ms, 6 in-progress ms, 7-10 below.
-- Returns {epoch or false, revived (0/1), dead sockets left (0/1), then triples:
-- session_id, record JSON, 'OK' | end reason}.
-- One script takes each expired hold or deadline, so with many nodes sweeping
-- at once every expiry is acted on exactly once.
local limit = tonumber(ARGV[3])
local out = {redis.call('GET', P .. 'epoch')}
local function changed(s, tag)
  table.insert(out, s.id)
  table.insert(out, cjson.encode(s))
  table.insert(out, tag)
end

-- Node liveness (ARGV 7 this node's id or '', 8 its heartbeat ms, 9 hold ms,
-- 10 '1' on a process's first sweep):
-- this sweep is the caller's heartbeat. A caller missing from NODES was taken
-- for dead (or is new): `revived` tells it to reconcile its sockets with the store.
local me, hold = ARGV[7], tonumber(ARGV[9])
local revived = 0
if me ~= '' and ARGV[10] == '1' and redis.call('EXISTS', ckey(me)) == 1 then
  -- A new process under a node id that was in use (a fixed --node-id restarted
  -- within the timeout): the sockets on the books under it were the old one's.
  local stale = me .. '#' .. ARGV[2]
  redis.call('RENAME', ckey(me), ckey(stale))
  redis.call('SADD', DEAD, stale)
end
if me ~= '' then
  if not redis.call('ZSCORE', NODES, me) then
    revived = 1
    redis.call('SREM', DEAD, me) -- what was not dropped yet stays its own
  end
  redis.call('ZADD', NODES, NOW + tonumber(ARGV[8]), me)
end
table.insert(out, revived)
table.insert(out, 0) -- set to 1 below when a dead node's sockets remain to drop
for _, node in ipairs(redis.call('ZRANGEBYSCORE', NODES, '-inf', '(' .. NOW, 'LIMIT', 0, limit)) do
  redis.call('ZREM', NODES, node)
  redis.call('SADD', DEAD, node)
end
-- A dead node's sockets are dropped as if each had closed: seat holds, then
-- player_left timeout and host migration by the hold sweep below. Bounded:
-- 10 * `limit` players per call (a drop is three commands); the caller sweeps
-- again at once while some remain.
local budget = 10 * limit
for _, node in ipairs(redis.call('SMEMBERS', DEAD)) do
  if budget <= 0 then
    out[3] = 1
    break
  end
  local pids = redis.call('SPOP', ckey(node), budget)
  budget = budget - #pids
  for _, pid in ipairs(pids) do
    local p = load(pkey(pid))
    if p and p.conn ~= '' and conn_node(p.conn) == (string.match(node, '^(.*)#%d+$') or node) then
      local s = drop_conn(p, hold)
      if s then changed(s, 'OK') end
    end
  end
  if redis.call('EXISTS', ckey(node)) == 0 then
    redis.call('SREM', DEAD, node)
  elseif budget <= 0 then
    out[3] = 1
  end
end

local due = redis.call('ZRANGEBYSCORE', HOLDS, '-inf', NOW, 'LIMIT', 0, limit)
for _, pid in ipairs(due) do
  redis.call('ZREM', HOLDS, pid)
  local p = load(pkey(pid))
  if p and p.conn == '' and p.sid then
    local s = load(skey(p.sid))
    if s and s.state == 'WAITING' then
      local after, ended = remove_member(s, pid, 'timeout')
      redis.call('DEL', pkey(pid))
      if ended then changed(after, 'abandoned') else changed(after, 'OK') end
    end
  end
end

local windows = {
  WAITING = {tonumber(ARGV[4]), 'idle'},
  CONNECTING = {tonumber(ARGV[5]), 'server_timeout'},
  IN_PROGRESS = {tonumber(ARGV[6]), 'expired'},
}
local shortest = math.min(windows.WAITING[1], windows.CONNECTING[1], windows.IN_PROGRESS[1])
local stale = redis.call('ZRANGEBYSCORE', DEADLINES, '-inf', NOW - shortest, 'LIMIT', 0, limit)
for _, sid in ipairs(stale) do
  local s = load(skey(sid))
  if not s then
    redis.call('ZREM', DEADLINES, sid)
  else
    local w = windows[s.state]
    local since = s.active
    if s.state == 'CONNECTING' and s.started ~= NULL and s.started then since = s.started end
    local deadline = since + w[1]
    if deadline <= NOW then
      changed(close_session(s, w[2]), w[2])
    else
      -- Not due yet (activity moved it): come back exactly when it could be.
      redis.call('ZADD', DEADLINES, deadline - shortest, sid)
    end
  end
end
return out
