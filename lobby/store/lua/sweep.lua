-- One bucket's timeouts, by the node holding the bucket's sweep lease.
-- ARGV: 3 limit, 4 idle ms (WAITING), 5 connecting ms, 6 in-progress ms, 7 this
-- node's id, 8 lease ms, 9 '1' to give the lease up after this sweep (the bucket
-- has another owner now), 10 '1' to sweep even if another node holds the lease.
-- Returns {'BUSY'} while another node holds the lease, else {epoch or false,
-- JSON list of the players to release (p_release.lua 'forget'): [[player_id,
-- session_id], ...], then triples: session_id, record JSON,
-- 'OK' | end reason}. One script takes each expired hold or deadline, so every
-- expiry is acted on exactly once whichever nodes sweep.
local limit = tonumber(ARGV[3])
local me = ARGV[7]
-- The lease runs on the callers' clock, like every other deadline here.
local LEASE = B .. 'sweeper'
if not local_keys({EPOCH, LEASE, HOLDS, DEADLINES, OPEN, OPENP}) then return {'BUSY'} end
local lease = redis.call('HMGET', LEASE, 'node', 'until')
if lease[1] and lease[1] ~= me and tonumber(lease[2]) > NOW and ARGV[10] ~= '1' then
  return {'BUSY'}
end
redis.call('HSET', LEASE, 'node', me, 'until', NOW + tonumber(ARGV[8]))
local out = {redis.call('GET', EPOCH)}
local release = {}
local function changed(s, tag)
  table.insert(out, s.id)
  table.insert(out, enc(s))
  table.insert(out, tag)
end
local function release_members(s)
  for _, m in ipairs(s.members) do table.insert(release, {m.id, s.id}) end
end

-- A session whose keys are not all here (its slot is migrating) ends this
-- sweep: what was done so far is returned, the rest waits for the next one.
local function here(sid)
  if not local_keys(session_keys(sid)) then return false end
  local s = load(skey(sid))
  return (not s or index_local(s)), s
end

for _, entry in ipairs(redis.call('ZRANGEBYSCORE', HOLDS, '-inf', NOW, 'LIMIT', 0, limit)) do
  local sid, pid = string.match(entry, '^(.-) (.*)$')
  local is_here, s = here(sid)
  if not is_here then break end
  redis.call('ZREM', HOLDS, entry)
  if s and s.state == 'WAITING' and member_index(s, pid) and seat_conn(s, pid) == '' then
    local after, ended = remove_member(s, pid, 'timeout')
    table.insert(release, {pid, sid})
    if ended then changed(after, 'abandoned') else changed(after, 'OK') end
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
  local is_here, s = here(sid)
  if not is_here then break end
  if not s then
    redis.call('ZREM', DEADLINES, sid)
  else
    local w = windows[s.state]
    local since = s.active
    if s.state == 'CONNECTING' and s.started ~= NULL and s.started then since = s.started end
    local deadline = since + w[1]
    if deadline <= NOW then
      release_members(s)
      changed(close_session(s, w[2]), w[2])
    else
      -- Not due yet (activity moved it): come back exactly when it could be.
      redis.call('ZADD', DEADLINES, deadline - shortest, sid)
    end
  end
end
table.insert(out, 2, cjson.encode(release))
if ARGV[9] == '1' then redis.call('DEL', LEASE) end
return out
