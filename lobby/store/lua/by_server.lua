-- ARGV: 3 server_id. The session the game server serves, or false.
local sid = redis.call('HGET', SERVERS, ARGV[3])
if not sid then return false end
return redis.call('GET', skey(sid))
