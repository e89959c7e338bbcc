-- Shared by every script (lobby/store/redis.py prepends it). ARGV[1] is the key
-- prefix and ARGV[2] the caller's clock in ms; the rest belong to each script.
-- Keys are derived here rather than passed in KEYS because a session's member
-- list decides which player keys a change touches; the store therefore targets
-- a single Redis (or one with all keys in one slot), not Redis Cluster.
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local NULL = cjson.null
local OPEN = P .. 'open'
local HOLDS = P .. 'holds'
local SEQ = P .. 'seq'
-- Sessions by the time of their last state change; the sweep derives each
-- session's real deadline (idle, connecting, in-progress) from its record.
local DEADLINES = P .. 'deadlines'
-- Game server id -> id of the live session it serves, for game servers that
-- know only their own (FleetIQ) id.
local SERVERS = P .. 'servers'
-- Listed sessions by players then creation (count * PLAYERS_SCALE + seq): the
-- most_players / fewest_players sorts walk it. seq stays far below the scale.
local OPENP = P .. 'openp'
local PLAYERS_SCALE = 1e12
-- Join code -> session id, for the live sessions.
local CODES = P .. 'codes'

-- Node liveness: node id -> the time its heartbeat (each sweep) lapses. A node
-- past it is moved to DEAD, and the sweep drops its players' sockets.
local NODES = P .. 'nodes'
local DEAD = P .. 'dead'

local function skey(sid) return P .. 's:' .. sid end
local function pkey(pid) return P .. 'p:' .. pid end
-- An equality index: the listed sessions (by seq) whose attribute has one value.
local function ixkey(token) return P .. 'ix:' .. token end
-- A session's chat lives beside its record, under keys derived from its id, and
-- goes with it: the log (a list of message JSON texts, oldest first) and a hash
-- of the message counter ('seq') and each sender's recent send times ('r:' .. pid).
local function chatkey(sid) return P .. 'c:' .. sid end
local function chatmetakey(sid) return P .. 'cm:' .. sid end
-- The players whose socket is on a node (conn ids are 'NODEID.N'), so that a
-- dead node's sockets can be found without scanning every player.
local function ckey(node) return P .. 'nc:' .. node end
local function conn_node(conn) return string.match(conn, '^(.+)%.[^.]*$') end

local function load(key)
  local raw = redis.call('GET', key)
  if raw then return cjson.decode(raw) end
  return nil
end

local function save(key, t) redis.call('SET', key, cjson.encode(t)) end

-- Every change of a player's conn goes through here, keeping ckey() in step.
local function set_conn(p, conn)
  local was = p.conn and p.conn ~= '' and conn_node(p.conn)
  if was then redis.call('SREM', ckey(was), p.id) end
  p.conn = conn
  local now_on = conn ~= '' and conn_node(conn)
  if now_on then redis.call('SADD', ckey(now_on), p.id) end
end

local function fail(code) return {'ERR', code} end
local function ok(s) return {'OK', cjson.encode(s)} end

-- Every change of a session bumps its version; events carry it so that a
-- client snapshot can be ordered against the pushes that follow it.
local function touch(s)
  s.v = s.v + 1
  s.updated = NOW
end

local function publish(s, ev)
  ev.sid = s.id
  ev.v = s.v
  ev.s = s
  redis.call('PUBLISH', P .. 'ev:' .. s.id, cjson.encode(ev))
end

-- Listed: what list_sessions may show (mirrors MemoryStore._listed).
local function listed(s)
  return s.state == 'WAITING' and #s.members < s.max and s.vis ~= 'unlisted'
    and s.locked ~= true
end

local function unindex(s)
  redis.call('ZREM', OPEN, s.id)
  redis.call('ZREM', OPENP, s.id)
  for token in pairs(s.ix or {}) do redis.call('ZREM', ixkey(token), s.id) end
end

-- The search indexes (open, openp, one per indexed attribute value) hold exactly
-- the listed sessions; every change of a session calls this in its own script.
local function index_open(s)
  if listed(s) then
    redis.call('ZADD', OPEN, s.seq, s.id)
    redis.call('ZADD', OPENP, #s.members * PLAYERS_SCALE + s.seq, s.id)
    for token in pairs(s.ix or {}) do redis.call('ZADD', ixkey(token), s.seq, s.id) end
  else
    unindex(s)
  end
end

-- The index token of one attribute value (mirrors search.attr_token).
local function attr_token(k, v)
  local t = type(v)
  if t == 'string' then return k .. '=s:' .. v end
  if t == 'boolean' then
    if v then return k .. '=b:1' end
    return k .. '=b:0'
  end
  return k .. '=n:' .. string.format('%.14g', v)
end

-- After the attributes changed: the tokens of the indexed keys ('*': all keys).
local function reindex(s, indexed)
  unindex(s)
  local keys = nil
  if indexed ~= '*' then
    keys = {}
    for _, k in ipairs(cjson.decode(indexed)) do keys[k] = true end
  end
  local ix = {}
  for k, v in pairs(s.attrs) do
    if keys == nil or keys[k] then ix[attr_token(k, v)] = true end
  end
  s.ix = ix
  index_open(s)
end

-- Merges an update (null deletes a key) into attributes; nil when the result
-- would have more than `limit` keys.
local function merge_attrs(attrs, update, limit)
  local out = {}
  for k, v in pairs(attrs or {}) do out[k] = v end
  for k, v in pairs(update) do
    if v == NULL then out[k] = nil else out[k] = v end
  end
  local n = 0
  for _ in pairs(out) do n = n + 1 end
  if n > limit then return nil end
  return out
end

-- The session a host-only request acts on: the caller's own WAITING session,
-- or the error code that refuses the request.
local function hosted_waiting_session(pid)
  local p = load(pkey(pid))
  if not p then return nil, 'NOT_AUTHENTICATED' end
  if not p.sid then return nil, 'NOT_IN_SESSION' end
  local s = load(skey(p.sid))
  if not s then return nil, 'NOT_IN_SESSION' end
  if s.host ~= pid then return nil, 'NOT_HOST' end
  if s.state ~= 'WAITING' then return nil, 'SESSION_NOT_WAITING' end
  return s, nil
end

-- The caller's session when the caller hosts it, in any state.
local function hosted_session(pid)
  local p = load(pkey(pid))
  if not p then return nil, 'NOT_AUTHENTICATED' end
  if not p.sid then return nil, 'NOT_IN_SESSION' end
  local s = load(skey(p.sid))
  if not s then return nil, 'NOT_IN_SESSION' end
  if s.host ~= pid then return nil, 'NOT_HOST' end
  return s, nil
end

-- A state change is versioned, counts as activity, restarts the new state's
-- timeout and decides whether the session is browsable.
local function change_state(s, state)
  s.state = state
  touch(s)
  s.active = NOW
  redis.call('ZADD', DEADLINES, NOW, s.id)
  index_open(s)
end

local function member_index(s, pid)
  for i, m in ipairs(s.members) do
    if m.id == pid then return i end
  end
  return nil
end

local function delete_session(s)
  redis.call('DEL', skey(s.id), chatkey(s.id), chatmetakey(s.id))
  unindex(s)
  redis.call('ZREM', DEADLINES, s.id)
  if type(s.code) == 'string' and redis.call('HGET', CODES, s.code) == s.id then
    redis.call('HDEL', CODES, s.code)
  end
  -- Only our own entry: the server may already serve a later session.
  if type(s.server_id) == 'string' and redis.call('HGET', SERVERS, s.server_id) == s.id then
    redis.call('HDEL', SERVERS, s.server_id)
  end
end

-- The reply of a change that may have ended the session: 'DEL' and the final
-- record (for the persisted ENDED item), or 'OK' and the record.
local function outcome(s, ended)
  if ended then return {'DEL', cjson.encode(s)} end
  return ok(s)
end

-- Removes a member, migrating the host to the longest-present player and
-- deleting the session with its last member. Returns the record and whether
-- the session was deleted.
local function remove_member(s, pid, reason)
  local i = member_index(s, pid)
  if not i then return s, false end
  table.remove(s.members, i)
  redis.call('ZREM', HOLDS, pid)
  if #s.members == 0 then
    touch(s)
    delete_session(s)
    redis.call('PUBLISH', P .. 'ev:' .. s.id,
      cjson.encode({e = 'session_deleted', sid = s.id, v = s.v, reason = reason}))
    return s, true
  end
  touch(s)
  s.active = NOW
  local host_changed = false
  if s.host == pid then
    s.host = s.members[1].id
    host_changed = true
  end
  index_open(s)
  save(skey(s.id), s)
  publish(s, {e = 'player_left', player_id = pid, reason = reason})
  if host_changed then publish(s, {e = 'host_changed', host_id = s.host}) end
  return s, false
end

-- Ends a session whatever its state: members are released (a disconnected
-- one is forgotten), and connected members are told why.
local function close_session(s, reason)
  for _, m in ipairs(s.members) do
    redis.call('ZREM', HOLDS, m.id)
    local p = load(pkey(m.id))
    if p and p.sid == s.id then
      if p.conn == '' then
        redis.call('DEL', pkey(m.id))
      else
        p.sid = nil
        save(pkey(m.id), p)
      end
    end
  end
  touch(s)
  delete_session(s)
  publish(s, {e = 'session_closed', reason = reason})
  return s
end

-- The player's socket is gone (it closed, or its node died). A member's seat is
-- held and the others are told (player_disconnected); the session is returned.
-- A player in no session is kept for the hold only.
local function drop_conn(p, hold)
  set_conn(p, '')
  p.disc = NOW
  if p.sid then
    local s = load(skey(p.sid))
    save(pkey(p.id), p)
    local i = s and member_index(s, p.id)
    if i then
      -- Seats in a started session are held for the session's life: no deadline (0).
      local off = 0
      if s.state == 'WAITING' then
        off = NOW + hold
        redis.call('ZADD', HOLDS, off, p.id)
      end
      s.members[i].off = off
      touch(s)
      save(skey(s.id), s)
      local deadline = NULL
      if off > 0 then deadline = off / 1000 end
      publish(s, {e = 'player_disconnected', player_id = p.id, hold_until = deadline})
      return s
    end
  else
    redis.call('SET', pkey(p.id), cjson.encode(p), 'PX', math.max(hold, 1))
  end
  return nil
end
