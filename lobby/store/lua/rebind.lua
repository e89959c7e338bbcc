-- ARGV: 3 JSON list of {id, name, tokh, conn, sid}: this node's live sockets.
-- After a Redis rebuild, players still connected here get their sockets back
-- (and lose the seat hold the rebuild gave them).
local rebound = 0
for _, c in ipairs(cjson.decode(ARGV[3])) do
  local p = load(pkey(c.id))
  if not p then
    p = {id = c.id, name = c.name, tokh = c.tokh, conn = ''}
    set_conn(p, c.conn)
    if c.sid then
      local s = load(skey(c.sid))
      if s and member_index(s, c.id) then p.sid = c.sid end
    end
    save(pkey(c.id), p)
    rebound = rebound + 1
  elseif p.conn == '' then
    set_conn(p, c.conn)
    save(pkey(c.id), p)
    redis.call('ZREM', HOLDS, c.id)
    rebound = rebound + 1
  end
end
return rebound
