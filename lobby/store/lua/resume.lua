-- ARGV: 3 player_id, 4 token hash, 5 new conn id
local pid, conn = ARGV[3], ARGV[5]
local p = load(pkey(pid))
if not p or p.tokh ~= ARGV[4] then return fail('UNKNOWN') end
local old = p.conn
set_conn(p, conn)
p.disc = nil
redis.call('ZREM', HOLDS, pid)
save(pkey(pid), p) -- a plain SET also drops the expiry of a session-less player
if old ~= '' and old ~= conn then
  local node = conn_node(old)
  if node then
    redis.call('PUBLISH', P .. 'node:' .. node,
      cjson.encode({e = 'replaced', player_id = pid, conn = old}))
  end
end
local raw = false
local back = 0
if p.sid then
  local s = load(skey(p.sid))
  local i = s and member_index(s, pid)
  if i and s.members[i].off then
    -- The seat was held: the others learn that its player is back.
    s.members[i].off = nil
    touch(s)
    raw = cjson.encode(s)
    redis.call('SET', skey(s.id), raw)
    publish(s, {e = 'player_reconnected', player_id = pid})
    back = 1
  else
    raw = redis.call('GET', skey(p.sid))
  end
end
return {'OK', cjson.encode(p), raw, back}
