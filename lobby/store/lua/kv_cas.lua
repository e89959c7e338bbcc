-- KEYS: 1 a key that names a session (a join code's, a game server's).
-- ARGV: 3 the value it must hold ('' for none), 4 the new value ('' to delete).
-- Returns 1 if the key held the expected value and was changed.
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[3] then return 0 end
if ARGV[4] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[4]) end
return 1
