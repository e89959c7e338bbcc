-- Node liveness (KEYS[1] the {nodes} slot's prefix). ARGV: 3 this node's id,
-- 4 its heartbeat ms, 5 limit, 6 stale entry to add to DEAD or '' (a new process
-- under a node id that was in use renamed its predecessor's player set to it).
-- Each node's sweep is its heartbeat: LIVE holds node id -> the time it lapses.
-- A node past it is moved to DEAD, whose players' sockets are dropped by any
-- node's sweep (redis.py: SPOP from the node's player set, so each once).
-- Returns {revived (0/1), JSON list of DEAD, JSON list of live node ids}: a
-- caller missing from LIVE was taken for dead (or is new), so it reconciles its
-- sockets with the store.
local LIVE, DEAD = KEYS[1] .. 'live', KEYS[1] .. 'dead'
local me = ARGV[3]
if not local_keys({LIVE, DEAD}) then return MIGRATING end
if ARGV[6] ~= '' then redis.call('SADD', DEAD, ARGV[6]) end
local revived = 0
if not redis.call('ZSCORE', LIVE, me) then
  revived = 1
  redis.call('SREM', DEAD, me) -- what was not dropped yet stays its own
end
redis.call('ZADD', LIVE, NOW + tonumber(ARGV[4]), me)
for _, node in ipairs(redis.call('ZRANGEBYSCORE', LIVE, '-inf', '(' .. NOW, 'LIMIT', 0,
    tonumber(ARGV[5]))) do
  redis.call('ZREM', LIVE, node)
  redis.call('SADD', DEAD, node)
end
return {revived, cjson.encode(redis.call('SMEMBERS', DEAD)),
        cjson.encode(redis.call('ZRANGE', LIVE, 0, -1))}
