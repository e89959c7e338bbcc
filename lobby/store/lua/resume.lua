-- ARGV: 3 player_id, 4 token hash, 5 new conn id
local pid, conn = ARGV[3], ARGV[5]
local p = load(pkey(pid))
if not p or p.tokh ~= ARGV[4] then return fail('UNKNOWN') end
local old = p.conn
p.conn = conn
p.disc = nil
redis.call('ZREM', HOLDS, pid)
save(pkey(pid), p) -- a plain SET also drops the expiry of a session-less player
if old ~= '' and old ~= conn then
  local node = string.match(old, '^(.+)%.[^.]*$')
  if node then
    redis.call('PUBLISH', P .. 'node:' .. node,
      cjson.encode({e = 'replaced', player_id = pid, conn = old}))
  end
end
local raw = false
if p.sid then raw = redis.call('GET', skey(p.sid)) end
return {'OK', cjson.encode(p), raw}
