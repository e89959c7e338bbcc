-- ARGV[2] WebSockets of incarnation ARGV[1] from the address of KEYS[1] closed.
-- A count that reaches zero (or below: one dropped by a sweep while its node
-- was taken for dead) goes, and the hash with its last count.
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -tonumber(ARGV[2]))
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
