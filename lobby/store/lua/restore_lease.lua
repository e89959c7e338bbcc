-- ARGV: 3 'take' | 'drop', 4 owner token, 5 lease ms.
-- The rebuild of an emptied Redis is done by one node at a time, in batches:
-- the node holding this lease. 'take' acquires it, or renews it for its owner;
-- 'drop' releases it if it is still the owner's.
-- Returns {'DONE', epoch} once a rebuild has finished (nothing to do),
-- {'MINE', ''} for the owner, {'BUSY', holder} while another node holds it.
local LEASE = P .. 'rebuild'
local owner = ARGV[4]
if ARGV[3] == 'drop' then
  if redis.call('GET', LEASE) == owner then redis.call('DEL', LEASE) end
  return {'DROPPED', ''}
end
local current = redis.call('GET', P .. 'epoch')
if current then return {'DONE', current} end
local holder = redis.call('GET', LEASE)
if holder and holder ~= owner then return {'BUSY', holder} end
-- A lease that ran out while its owner was slow is simply taken again: the
-- batches it wrote are kept, since restoring only writes missing sessions.
redis.call('SET', LEASE, owner, 'PX', tonumber(ARGV[5]))
return {'MINE', ''}
