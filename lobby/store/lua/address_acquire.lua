-- One more WebSocket from a client address, on one node incarnation, if the
-- lobby as a whole holds fewer than the cap from that address.
-- KEYS[1]: the address's hash (its own hash tag): node incarnation -> sockets.
-- ARGV[1] incarnation, ARGV[2] cap, ARGV[3] ms the hash outlives its last
-- change (a backstop: a dead node's counts are dropped by address sweeps).
-- Returns {1 admitted | 0 refused, sockets from the address after this call}.
local total = 0
for _, n in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(n) end
if total >= tonumber(ARGV[2]) then return {0, total} end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, total + 1}
