-- KEYS: 1 session record, 2 chat log. ARGV: 3 player_id.
-- The kept messages, oldest first, to a member only.
local s = load(KEYS[1])
if not (s and member_index(s, ARGV[3])) then return fail('NOT_IN_SESSION') end
return {'OK', redis.call('LRANGE', KEYS[2], 0, -1)}
