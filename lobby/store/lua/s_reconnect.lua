-- ARGV: 3 player_id, 4 session_id (the player's pointer), 5 the player's new conn.
-- The player is back on socket `conn` (a resume, a claim, a node's reconcile or
-- rebind): the seat is that socket's; a held seat is no longer held and the
-- others learn that its player is back. Returns {'OK', record, 1 if it was held}
-- or {'NO'} when the session does not list the player (the pointer was stale).
local pid, conn = ARGV[3], ARGV[5]
local s, refused, i = member_session(ARGV[4], pid)
if refused == 'MIGRATING' then return MIGRATING end
if refused then return {'NO'} end
set_seat_conn(s, pid, conn)
redis.call('ZREM', HOLDS, held(s.id, pid))
local back = 0
if s.members[i].off then
  s.members[i].off = nil
  touch(s)
  back = 1
end
save(skey(s.id), s)
if back == 1 then publish(s, {e = 'player_reconnected', player_id = pid}) end
return {'OK', enc(s), back}
