-- KEYS: 1 the player's key. ARGV: 3 JSON {id, name, tokh, sid}: a member of a
-- session restored from DynamoDB, whose record the rebuild writes unless the
-- player still has one (a shard that kept its data). Returns 1 if written.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local m = cjson.decode(ARGV[3])
save(KEYS[1], {id = m.id, name = m.name, tokh = m.tokh, conn = '', sid = m.sid})
return 1
