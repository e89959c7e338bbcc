-- The heartbeat of a node incarnation's address counts. KEYS[1]: incarnation ->
-- the time its heartbeat lapses. ARGV[1] incarnation, ARGV[2] now ms, ARGV[3]
-- heartbeat ms, ARGV[4] '1' for its first beat (it registers).
-- Returns 1 while it is alive; 0 when its heartbeat had lapsed or it is gone
-- (swept): its counts are being dropped, and the node must go on under a new
-- incarnation.
local lapses = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not lapses and ARGV[4] ~= '1') or (lapses and tonumber(lapses) <= tonumber(ARGV[2])) then
  return 0
end
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
return 1
