-- ARGV: 3 limit, 4 idle ms (WAITING), 5 connecting ms, 6 in-progress ms.
-- Returns {epoch or false, then triples: session_id, record JSON, 'OK' | end reason}.
-- One script takes each expired hold or deadline, so with many nodes sweeping
-- at once every expiry is acted on exactly once.
local limit = tonumber(ARGV[3])
local out = {redis.call('GET', P .. 'epoch')}
local function changed(s, tag)
  table.insert(out, s.id)
  table.insert(out, cjson.encode(s))
  table.insert(out, tag)
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
