-- ARGV: 3 player_id, 4 conn id, 5 hold ms
local pid, conn, hold = ARGV[3], ARGV[4], tonumber(ARGV[5])
local p = load(pkey(pid))
if not p or p.conn ~= conn then return 0 end
p.conn = ''
p.disc = NOW
if p.sid then
  local s = load(skey(p.sid))
  -- Seats in a started session are held for the session's life: no deadline.
  if s and s.state == 'WAITING' then redis.call('ZADD', HOLDS, NOW + hold, pid) end
  save(pkey(pid), p)
else
  redis.call('SET', pkey(pid), cjson.encode(p), 'PX', math.max(hold, 1))
end
return 1
