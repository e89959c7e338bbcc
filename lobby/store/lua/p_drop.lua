-- KEYS: 1 the player's key. ARGV: 3 conn id, 4 hold ms.
-- The socket `conn` closed: if it was the player's, the player has no socket
-- now. Returns {'OK', session id or ''} (the caller then holds the seat:
-- s_drop.lua), or {'NO'} when the player is on another socket (or gone).
-- A player in no session is kept for the hold only.
local p = load(KEYS[1])
if not p or p.conn ~= ARGV[3] then return {'NO'} end
p.conn = ''
p.disc = NOW
if p.sid then
  save(KEYS[1], p)
  return {'OK', p.sid}
end
redis.call('SET', KEYS[1], cjson.encode(p), 'PX', math.max(tonumber(ARGV[4]), 1))
return {'OK', ''}
