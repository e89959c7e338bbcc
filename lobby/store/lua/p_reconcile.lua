-- KEYS: 1 the player's key. ARGV: 3 JSON {id, name, tokh, conn, sid?}: a live
-- socket of the calling node, with the session it believes it is in; 4 'rebind'
-- (after a rebuild: only a missing or socket-less player is taken back) or
-- 'reconcile' (after the node was cut off: the store wins).
-- Returns {verdict, the player's session id or ''}: 'OK' (the socket is the
-- player's: a record that expired meanwhile is written again; the caller then
-- reconnects the seat), 'REPLACED' (the player is on another socket now),
-- 'SKIP' (rebind: nothing to do).
local c = cjson.decode(ARGV[3])
local p = load(KEYS[1])
if not p then
  p = {id = c.id, name = c.name, tokh = c.tokh, conn = c.conn, sid = c.sid}
  save(KEYS[1], p)
  return {'OK', p.sid or ''}
end
if p.conn == '' then
  p.conn = c.conn
  p.disc = nil
  save(KEYS[1], p) -- a plain SET also drops the expiry of a session-less player
  return {'OK', p.sid or ''}
end
if p.conn ~= c.conn then
  if ARGV[4] == 'rebind' then return {'SKIP', ''} end
  return {'REPLACED', ''}
end
if ARGV[4] == 'rebind' then return {'SKIP', ''} end
return {'OK', p.sid or ''}
