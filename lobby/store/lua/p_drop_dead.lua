-- KEYS: 1 the player's key. ARGV: 3 the dead node's id (its sockets' conn
-- prefix), 4 hold ms. The player's socket was on a node that died: as
-- p_drop.lua for that socket. Returns {'OK', session id or '', the conn} or {'NO'}.
local p = load(KEYS[1])
if not p or p.conn == '' or conn_node(p.conn) ~= ARGV[3] then return {'NO'} end
local conn = p.conn
p.conn = ''
p.disc = NOW
if p.sid then
  save(KEYS[1], p)
  return {'OK', p.sid, conn}
end
redis.call('SET', KEYS[1], cjson.encode(p), 'PX', math.max(tonumber(ARGV[4]), 1))
return {'OK', '', conn}
