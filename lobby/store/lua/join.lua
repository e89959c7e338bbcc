-- ARGV: 3 player_id, 4 session_id, 5 verified password hash JSON or '',
-- 6 the player's name, 7 token hash, 8 conn (from p_intent.lua).
-- ARGV[9] 'intent', one Redis only (no slots, no operation keys): KEYS[2] is the
-- player's key and p_intent.lua ran just before this call on the same connection;
-- the name, token hash and conn are read from it, and a pointer that does not name
-- this session (p_intent refused) answers {'INTENT'} having changed nothing.
local pid, sid = ARGV[3], ARGV[4]
local pname, ptokh, pconn = ARGV[6], ARGV[7], ARGV[8]
if ARGV[9] == 'intent' then
  local p = load(KEYS[2])
  if not p or p.sid ~= sid then return {'INTENT'} end
  pname, ptokh, pconn = p.name, p.tokh, p.conn
end
if not local_keys(session_keys(sid)) then return MIGRATING end
local s = load(skey(sid))
if s and not index_local(s) then return MIGRATING end
if not s then return fail('SESSION_NOT_FOUND') end
if member_index(s, pid) then return fail('ALREADY_IN_SESSION') end
if s.bans and s.bans[pid] then return fail('BANNED') end
if s.state ~= 'WAITING' then return fail('SESSION_NOT_WAITING') end
if s.locked == true then return fail('SESSION_LOCKED') end
if #s.members >= s.max then return fail('SESSION_FULL') end
if s.pw ~= NULL then
  -- The password was checked by the caller (scrypt is too slow for a script);
  -- the join is valid only against the very hash that was checked.
  if ARGV[5] == '' then return {'PW', cjson.encode(s.pw)} end
  local vp = cjson.decode(ARGV[5])
  if vp.hash ~= s.pw.hash or vp.salt ~= s.pw.salt then return {'PW', cjson.encode(s.pw)} end
end
-- The token hash rides along so that a Redis rebuilt from DynamoDB can resume.
table.insert(s.members, {id = pid, name = pname, joined = NOW, tokh = ptokh, attrs = {}})
set_seat_conn(s, pid, pconn)
touch(s)
s.active = NOW
index_open(s)
save(skey(sid), s)
publish(s, {e = 'player_joined', player_id = pid, name = pname})
-- The chat so far, read in the same step: later messages reach the joiner as events.
return {'OK', enc(s), redis.call('LRANGE', chatkey(sid), 0, -1)}
