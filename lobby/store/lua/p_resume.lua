-- KEYS: 1 the player's key. ARGV: 3 player_id, 4 token hash, 5 new conn id,
-- 6 'claim' (a verified identity: no token check, the new token hash is kept, a
-- missing player is created) or 'resume', 7 name (for a claimed new player).
-- The player's socket is now `conn`. Returns {'OK', player JSON, old conn, 'new'|''}
-- or {'ERR', 'UNKNOWN'}; the caller tells the old conn's node (`replaced`) and
-- reconnects the seat in the player's session (s_reconnect.lua).
local pid, conn = ARGV[3], ARGV[5]
local p = load(KEYS[1])
if ARGV[6] == 'claim' then
  if not p then
    p = {id = pid, name = ARGV[7], tokh = ARGV[4], conn = conn}
    save(KEYS[1], p)
    return {'OK', cjson.encode(p), '', 'new'}
  end
  p.tokh = ARGV[4]
elseif not p or p.tokh ~= ARGV[4] then
  return fail('UNKNOWN')
end
local old = p.conn
p.conn = conn
p.disc = nil
save(KEYS[1], p) -- a plain SET also drops the expiry of a session-less player
return {'OK', cjson.encode(p), old, ''}
