-- The rebuild of an emptied bucket is done by one node at a time, in batches:
-- the node holding this bucket's lease. ARGV: 3 'take' | 'drop' | 'done',
-- 4 owner token, 5 lease ms ('take') or the new epoch ('done').
-- 'take' acquires the lease, or renews it for its owner: {'DONE', epoch} once a
-- rebuild has finished (nothing to do), {'MINE', ''} for the owner, {'BUSY',
-- holder} while another node holds it. A lease that ran out while its owner was
-- slow is simply taken again: the batches it wrote are kept, since restoring
-- only writes missing sessions.
-- 'done' ends the owner's rebuild: the epoch is set (nodes then re-register
-- their sockets) and the lease released; returns {'DONE', epoch} (the new one,
-- or the one another node's rebuild set first) or {'LOST', ''} if the lease is
-- not the caller's (the rebuild must start over).
-- 'drop' releases the lease if it is still the owner's.
local LEASE = B .. 'rebuild'
local owner = ARGV[4]
if not local_keys({EPOCH, LEASE}) then return MIGRATING end
if ARGV[3] == 'drop' then
  if redis.call('GET', LEASE) == owner then redis.call('DEL', LEASE) end
  return {'DROPPED', ''}
end
local current = redis.call('GET', EPOCH)
if current then return {'DONE', current} end
local holder = redis.call('GET', LEASE)
if ARGV[3] == 'done' then
  if holder ~= owner then return {'LOST', ''} end
  redis.call('SET', EPOCH, ARGV[5])
  redis.call('DEL', LEASE)
  return {'DONE', ARGV[5]}
end
if holder and holder ~= owner then return {'BUSY', holder} end
redis.call('SET', LEASE, owner, 'PX', tonumber(ARGV[5]))
return {'MINE', ''}
