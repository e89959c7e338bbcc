-- Shared by every script (lobby/store/redis.py prepends it). ARGV[1] is the key
-- prefix and ARGV[2] the caller's clock in ms; the rest belong to each script.
-- Every script touches one hash slot (lobby/store/keys.py has the layout), so the
-- same scripts run on one Redis, behind Sentinel and on Redis Cluster:
--   * session scripts get their bucket's key prefix (with its hash tag) as KEYS[1]
--     and derive the bucket's keys from it: the session record, chat and event
--     channel, and the bucket's indexes, deadlines and seat holds;
--   * player scripts get the player's key as KEYS[1] (a slot of its own).
-- An operation that changes a player and a session is a short sequence of such
-- scripts (lobby/store/redis.py); the session's member list is the truth, the
-- player's `sid` a pointer that is checked against it.
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local NULL = cjson.null
local B = KEYS[1]
local OPEN = B .. 'open'
-- Held seats by deadline: 'SESSION_ID PLAYER_ID' (ids have no spaces).
local HOLDS = B .. 'holds'
local function held(sid, pid) return sid .. ' ' .. pid end
local SEQ = B .. 'seq'
-- Sessions by the time of their last state change; the sweep derives each
-- session's real deadline (idle, connecting, in-progress) from its record.
local DEADLINES = B .. 'deadlines'
-- Listed sessions by players then creation (count * PLAYERS_SCALE + seq): the
-- most_players / fewest_players sorts walk it. seq stays far below the scale.
local OPENP = B .. 'openp'
local PLAYERS_SCALE = 1e12
-- The bucket's generation: set by a rebuild from DynamoDB (or the first sweep of
-- a new deployment); missing means the bucket's shard lost its data.
local EPOCH = B .. 'epoch'

local function skey(sid) return B .. 's:' .. sid end
-- An equality index: the listed sessions (by seq) whose attribute has one value.
local function ixkey(token) return B .. 'ix:' .. token end
-- A session's chat lives beside its record, under keys derived from its id, and
-- goes with it: the log (a list of message JSON texts, oldest first) and a hash
-- of the message counter ('seq') and each sender's recent send times ('r:' .. pid).
local function chatkey(sid) return B .. 'c:' .. sid end
local function chatmetakey(sid) return B .. 'cm:' .. sid end
-- The session's sharded pub/sub channel, on the bucket's slot.
local function evkey(sid) return B .. 'ev:' .. sid end
-- Which socket holds each seat of a session: player id -> conn ('' once gone).
local function seatkey(sid) return B .. 'sc:' .. sid end
local function conn_node(conn) return string.match(conn, '^(.+)%.[^.]*$') end

-- A slot that Redis Cluster is migrating has some of its keys on each master;
-- a script there must not act on half of them. Before it reads or writes, a
-- script checks every key it will touch with one multi-key EXISTS, which the
-- cluster refuses (TRYAGAIN/ASK, seen here as an error) unless all of them are
-- on this master: the script then returns {'ERR', 'MIGRATING'} having changed
-- nothing, and redis.py tries again once the slot has moved (on one Redis the
-- check always passes). Keys that do not exist anywhere count as missing, so
-- during a migration of its slot a bucket waits.
local function local_keys(keys)
  local r = redis.pcall('EXISTS', unpack(keys))
  return not (type(r) == 'table' and r.err)
end

-- The keys any change of session `sid` may touch, besides its index entries.
local function session_keys(sid)
  return {EPOCH, skey(sid), chatkey(sid), chatmetakey(sid), seatkey(sid), OPEN, OPENP, HOLDS,
          DEADLINES, SEQ}
end

local MIGRATING = {'ERR', 'MIGRATING'}

local function load(key)
  local raw = redis.call('GET', key)
  if raw then return cjson.decode(raw) end
  return nil
end

local function save(key, t) redis.call('SET', key, cjson.encode(t)) end

-- The record as the caller gets it (which socket holds each seat is kept beside
-- it, in seatkey()).
local function enc(s) return cjson.encode(s) end

local function fail(code) return {'ERR', code} end
local function ok(s) return {'OK', enc(s)} end

-- Every change of a session bumps its version; events carry it so that a
-- client snapshot can be ordered against the pushes that follow it.
local function touch(s)
  s.v = s.v + 1
  s.updated = NOW
end

-- What an event carries of the record: what clients see, never a token or
-- password hash (mirrors session.bus_view).
local function bus_view(s)
  local out = {}
  for k, v in pairs(s) do
    if k ~= 'ix' and k ~= 'bans' then out[k] = v end
  end
  if s.pw ~= NULL then out.pw = {} end
  local members = {}
  for i, m in ipairs(s.members) do
    local c = {}
    for k, v in pairs(m) do
      if k ~= 'tokh' then c[k] = v end
    end
    members[i] = c
  end
  out.members = members
  return out
end

-- The session object of the wire protocol as members see it (mirrors
-- session.public_session(rec, member=True); tests/test_store_conformance.py
-- holds the two to the same output).
local function public_view(s)
  local ids, players = {}, {}
  for i, m in ipairs(s.members) do
    ids[i] = m.id
    players[i] = {player_id = m.id, name = m.name, attributes = m.attrs or {},
                  ready = m.ready == true, connected = m.off == nil}
  end
  return {
    session_id = s.id, name = s.name, host_id = s.host, session_state = s.state,
    player_count = #ids, max_players = s.max, connected_players = ids, players = players,
    has_password = s.pw ~= NULL, server_id = s.server_id, server_endpoint = s.endpoint,
    created_at = s.created / 1000, version = s.v, attributes = s.attrs or {},
    visibility = s.vis or 'public', locked = s.locked == true,
    join_code = s.code or NULL, start_rule = s.rule or 'host', min_players = s.minp or 1,
  }
end

-- An event: its own fields, then the record as `s` (what nodes of the previous
-- release read) and the members' view of the session as `p`, last, its length
-- in `pl`: a node cuts the fields off at ',"s":' and `p` off the end, and
-- forwards `p` without decoding it (lobby.hub). No field of an event is an
-- object with a key "s", and a JSON string cannot hold ',"', so the first
-- ',"s":' is the record's.
local function publish(s, ev)
  ev.sid = s.id
  ev.v = s.v
  ev.u = s.updated
  local view = cjson.encode(public_view(s))
  ev.pl = #view
  local head = cjson.encode(ev)
  redis.call('SPUBLISH', evkey(s.id), string.sub(head, 1, -2) .. ',"s":'
    .. cjson.encode(bus_view(s)) .. ',"p":' .. view .. '}')
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

-- The index keys a change of `s` touches: its current entries and `more`
-- (tokens it is about to get), checked like local_keys.
local function index_local(s, more)
  local keys = {EPOCH}
  for token in pairs(s.ix or {}) do table.insert(keys, ixkey(token)) end
  for token in pairs(more or {}) do table.insert(keys, ixkey(token)) end
  return local_keys(keys)
end

-- The tokens of the indexed keys ('*': all keys) of attributes.
local function tokens_of(attrs, indexed)
  local keys = nil
  if indexed ~= '*' then
    keys = {}
    for _, k in ipairs(cjson.decode(indexed)) do keys[k] = true end
  end
  local ix = {}
  for k, v in pairs(attrs or {}) do
    if keys == nil or keys[k] then ix[attr_token(k, v)] = true end
  end
  return ix
end

-- After the attributes changed: the tokens of the indexed keys ('*': all keys).
local function reindex(s, indexed)
  unindex(s)
  s.ix = tokens_of(s.attrs, indexed)
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

local function member_index(s, pid)
  for i, m in ipairs(s.members) do
    if m.id == pid then return i end
  end
  return nil
end

-- The session `sid` when `pid` is one of its members (the caller names the
-- session its player is in; the member list decides), or the refusal.
local function member_session(sid, pid)
  if sid ~= '' and not local_keys(session_keys(sid)) then return nil, 'MIGRATING' end
  local s = sid ~= '' and load(skey(sid))
  if s and not index_local(s) then return nil, 'MIGRATING' end
  local i = s and member_index(s, pid)
  if not i then return nil, 'NOT_IN_SESSION' end
  return s, nil, i
end

-- The caller's session when the caller hosts it, in any state.
local function hosted_session(sid, pid)
  local s, refused = member_session(sid, pid)
  if refused then return nil, refused end
  if s.host ~= pid then return nil, 'NOT_HOST' end
  return s, nil
end

-- The session a host-only request acts on: the caller's own WAITING session,
-- or the error code that refuses the request.
local function hosted_waiting_session(sid, pid)
  local s, refused = hosted_session(sid, pid)
  if refused then return nil, refused end
  if s.state ~= 'WAITING' then return nil, 'SESSION_NOT_WAITING' end
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

-- The join code and server index entries live in slots of their own: the caller
-- removes them after this (redis.py), only where they still name this session.
local function delete_session(s)
  redis.call('DEL', skey(s.id), chatkey(s.id), chatmetakey(s.id), seatkey(s.id))
  unindex(s)
  redis.call('ZREM', DEADLINES, s.id)
end

-- The reply of a change that may have ended the session: 'DEL' and the final
-- record (for the persisted ENDED item), or 'OK' and the record.
local function outcome(s, ended)
  if ended then return {'DEL', enc(s)} end
  return ok(s)
end

-- Removes a member, migrating the host to the longest-present player and
-- deleting the session with its last member. Returns the record and whether
-- the session was deleted.
local function remove_member(s, pid, reason)
  local i = member_index(s, pid)
  if not i then return s, false end
  table.remove(s.members, i)
  redis.call('HDEL', seatkey(s.id), pid)
  redis.call('ZREM', HOLDS, held(s.id, pid))
  if #s.members == 0 then
    touch(s)
    delete_session(s)
    redis.call('SPUBLISH', evkey(s.id),
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

-- Ends a session whatever its state; connected members are told why. The
-- caller releases the members' player records (their slots are elsewhere).
local function close_session(s, reason)
  for _, m in ipairs(s.members) do redis.call('ZREM', HOLDS, held(s.id, m.id)) end
  touch(s)
  delete_session(s)
  publish(s, {e = 'session_closed', reason = reason})
  return s
end

-- Which socket holds each seat: set on create, join and reconnect; '' once the
-- socket is gone. A seat whose socket is gone is held (off) or released.
local function seat_conn(s, pid)
  return redis.call('HGET', seatkey(s.id), pid) or ''
end

local function set_seat_conn(s, pid, conn)
  redis.call('HSET', seatkey(s.id), pid, conn)
end

-- The member's socket `conn` is gone (it closed, or its node died): the seat is
-- held and the others are told (player_disconnected). False when the seat is
-- not held by that socket (a newer one took it, or it already dropped).
local function drop_seat(s, pid, conn, hold)
  local i = member_index(s, pid)
  if not i or seat_conn(s, pid) ~= conn or conn == '' then return false end
  set_seat_conn(s, pid, '')
  -- Seats in a started session are held for the session's life: no deadline (0).
  local off = 0
  if s.state == 'WAITING' then
    off = NOW + hold
    redis.call('ZADD', HOLDS, off, held(s.id, pid))
  end
  s.members[i].off = off
  touch(s)
  save(skey(s.id), s)
  local deadline = NULL
  if off > 0 then deadline = off / 1000 end
  publish(s, {e = 'player_disconnected', player_id = pid, hold_until = deadline})
  return true
end
