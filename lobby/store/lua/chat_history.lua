-- ARGV: 3 player_id, 4 session_id.
-- The kept messages, oldest first, to a member only.
if not local_keys(session_keys(ARGV[4])) then return MIGRATING end
local s = load(skey(ARGV[4]))
if not (s and member_index(s, ARGV[3])) then return fail('NOT_IN_SESSION') end
return {'OK', redis.call('LRANGE', chatkey(ARGV[4]), 0, -1)}
