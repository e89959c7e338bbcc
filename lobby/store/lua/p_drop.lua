-- KEYS: 1 the player's key. ARGV: 3 conn id, 4 hold ms.
-- The socket `conn` closed: if it was the player's, the player has no socket
-- now. Returns {'OK', session id or ''} (the caller then holds the seat:
-- s_drop.lua), or {'NO'} when the player is on another socket (or gone).
-- A player in no session is kept for the hold only.
-- ARGV[5] 'forget', one Redis only (no slots, no operation keys): KEYS[2] is the
-- set of the node's players, left here when the socket was the player's (the
-- store's SREM after the reply, in the same call).
local p = load(KEYS[1])
if not p or p.conn ~= ARGV[3] then return {'NO'} end
if ARGV[5] == 'forget' then redis.call('SREM', KEYS[2], p.id) end
p.conn = ''
p.disc = NOW
if p.sid then
  save(KEYS[1], p)
  return {'OK', p.sid}
end
redis.call('SET', KEYS[1], cjson.encode(p), 'PX', math.max(tonumber(ARGV[4]), 1))
return {'OK', ''}
