-- ARGV: 3 player_id, 4 conn id, 5 hold ms.
-- Returns {'OK', session JSON} when a member's seat is now held (and the others
-- were told with player_disconnected), else {'NO'}.
local pid, conn, hold = ARGV[3], ARGV[4], tonumber(ARGV[5])
local p = load(pkey(pid))
if not p or p.conn ~= conn then return {'NO'} end
local s = drop_conn(p, hold)
if s then return ok(s) end
return {'NO'}
