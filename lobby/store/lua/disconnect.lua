-- ARGV: 3 player_id, 4 conn id, 5 hold ms.
-- Returns {'OK', session JSON} when a member's seat is now held (and the others
-- were told with player_disconnected), else {'NO'}.
local pid, conn, hold = ARGV[3], ARGV[4], tonumber(ARGV[5])
local p = load(pkey(pid))
if not p or p.conn ~= conn then return {'NO'} end
p.conn = ''
p.disc = NOW
if p.sid then
  local s = load(skey(p.sid))
  save(pkey(pid), p)
  local i = s and member_index(s, pid)
  if i then
    -- Seats in a started session are held for the session's life: no deadline (0).
    local off = 0
    if s.state == 'WAITING' then
      off = NOW + hold
      redis.call('ZADD', HOLDS, off, pid)
    end
    s.members[i].off = off
    touch(s)
    save(skey(s.id), s)
    local deadline = NULL
    if off > 0 then deadline = off / 1000 end
    publish(s, {e = 'player_disconnected', player_id = pid, hold_until = deadline})
    return ok(s)
  end
else
  redis.call('SET', pkey(pid), cjson.encode(p), 'PX', math.max(hold, 1))
end
return {'NO'}
