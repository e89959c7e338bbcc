-- ARGV: 3 owner token, 4 new epoch.
-- Ends the lease owner's rebuild: the epoch is set (nodes then re-register
-- their sockets) and the lease released. Returns the store's epoch: the new
-- one, or the one another node's rebuild set first; false if the lease is not
-- the caller's (the rebuild must start over).
local current = redis.call('GET', P .. 'epoch')
if current then return current end
if redis.call('GET', P .. 'rebuild') ~= ARGV[3] then return false end
redis.call('SET', P .. 'epoch', ARGV[4])
redis.call('DEL', P .. 'rebuild')
return ARGV[4]
