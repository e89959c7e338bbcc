-- A password guess on session ARGV[3] from client address ARGV[4], counted
-- before scrypt runs so that no number of sockets or nodes gets more guesses
-- verified than these limits (the memory store mirrors this rule for rule):
--   * per session: ARGV[5] guesses per window ARGV[7] ms; the next one locks the
--     session for every address that has already guessed on it, for ARGV[8] ms,
--     doubling with each consecutive lock up to ARGV[9] ms. An address that has
--     not guessed on the session in the window still gets one guess (the owner's
--     friend typing the right password during an attack), then it is locked too;
--   * per address, across sessions: ARGV[6] guesses per window, locked the same way.
-- The two counts live in different slots (the address' and the session's
-- bucket), so a guess takes three calls: ARGV[10] 'session-locked' (KEYS[1] the
-- bucket's prefix) refuses an address locked out of the session and 'address'
-- (KEYS[1] the address' prefix) checks and counts the address, both at once (the
-- caller applies the checks in this order: address already locked, locked out
-- of the session, address at its limit), then 'session' checks and counts the
-- session; when the session refuses, the caller refunds the address
-- ('address-refund'). 'session-refund' and 'address-refund'
-- also undo a guess whose password was right (it does not count).
-- An empty session id is a guess at no session in particular (a join code): the
-- address limit only.
-- Returns {'OK'} or {'LIMITED', retry_after_ms, 'session' | 'address'}.
local SID, ADDR = ARGV[3], ARGV[4]
local PER_SESSION, PER_ADDRESS = tonumber(ARGV[5]), tonumber(ARGV[6])
local WINDOW, LOCK, LOCK_MAX = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local SK = KEYS[1] .. 'pwg:s:' .. SID
local AK = KEYS[1] .. 'pwg'
local FK = KEYS[1] .. 'pwg:f:' .. SID
local MODE = ARGV[10]

local function state(key)
  local h = redis.call('HMGET', key, 'w', 'n', 'u', 'lv')
  local b = {w = tonumber(h[1]) or 0, n = tonumber(h[2]) or 0, u = tonumber(h[3]) or 0,
             lv = tonumber(h[4]) or 0}
  if NOW - b.w >= WINDOW then b.w = NOW; b.n = 0 end
  -- The lock level is forgotten once a whole maximum lock passes without one.
  if b.u > 0 and NOW - b.u >= LOCK_MAX then b.lv = 0 end
  return b
end

local function save(key, b)
  redis.call('HSET', key, 'w', b.w, 'n', b.n, 'u', b.u, 'lv', b.lv)
  redis.call('PEXPIRE', key, LOCK_MAX + WINDOW)
end

local function refund(key)
  local n = tonumber(redis.call('HGET', key, 'n') or '0')
  if n > 0 then redis.call('HSET', key, 'n', n - 1) end
end

if MODE == 'address-refund' then
  refund(AK)
  return {'OK'}
end
if MODE == 'session-uncount' then -- the address refused the guess after the session counted it
  refund(SK)
  return {'OK'}
end
if MODE == 'session-refund' then
  refund(SK)
  redis.call('SREM', FK, ADDR)
  return {'OK'}
end
if MODE == 'address' or MODE == 'address-lock' then
  local a = state(AK)
  if a.u > NOW then return {'LIMITED', a.u - NOW, 'address'} end
  -- 'address' only looks (it runs beside the session's lock check, which answers
  -- the guess first when it applies); 'address-lock' then counts the guess, or
  -- locks the address at its limit.
  if MODE == 'address' then
    if a.n >= PER_ADDRESS then return {'FULL'} end
    return {'OK'}
  end
  if a.n >= PER_ADDRESS then
    a.u = NOW + math.min(LOCK_MAX, LOCK * 2 ^ a.lv); a.lv = a.lv + 1; a.w = NOW; a.n = 0
    save(AK, a)
    return {'LIMITED', a.u - NOW, 'address'}
  end
  a.n = a.n + 1
  save(AK, a)
  return {'OK'}
end

if not local_keys({SK, FK, KEYS[1] .. 'pwg'}) then return MIGRATING end
local s = state(SK)
if s.u > NOW and redis.call('SISMEMBER', FK, ADDR) == 1 then
  return {'LIMITED', s.u - NOW, 'session'}
end
if MODE == 'session-locked' then return {'OK'} end
if s.u <= NOW and s.n >= PER_SESSION then
  s.u = NOW + math.min(LOCK_MAX, LOCK * 2 ^ s.lv); s.lv = s.lv + 1; s.w = NOW; s.n = 0
  if redis.call('SISMEMBER', FK, ADDR) == 1 then
    save(SK, s)
    redis.call('PEXPIRE', FK, math.max(WINDOW, s.u - NOW))
    return {'LIMITED', s.u - NOW, 'session'}
  end
end
s.n = s.n + 1
save(SK, s)
redis.call('SADD', FK, ADDR)
redis.call('PEXPIRE', FK, math.max(WINDOW, s.u - NOW))
return {'OK'}
