-- ARGV: 3 player_id, 4 session_id, 5 verified password hash JSON or ''
local pid, sid = ARGV[3], ARGV[4]
local p = load(pkey(pid))
if not p then return fail('NOT_AUTHENTICATED') end
if p.sid then return fail('ALREADY_IN_SESSION') end
local s = load(skey(sid))
if not s then return fail('SESSION_NOT_FOUND') end
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
table.insert(s.members, {id = pid, name = p.name, joined = NOW, tokh = p.tokh, attrs = {}})
touch(s)
s.active = NOW
index_open(s)
save(skey(sid), s)
p.sid = sid
save(pkey(pid), p)
publish(s, {e = 'player_joined', player_id = pid, name = p.name})
-- The chat so far, read in the same step: later messages reach the joiner as events.
return {'OK', cjson.encode(s), redis.call('LRANGE', chatkey(sid), 0, -1)}
