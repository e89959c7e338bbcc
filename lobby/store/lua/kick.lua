-- ARGV: 3 host player_id, 4 target player_id
local pid, target = ARGV[3], ARGV[4]
local p = load(pkey(pid))
if not p then return fail('NOT_AUTHENTICATED') end
if not p.sid then return fail('NOT_IN_SESSION') end
local s = load(skey(p.sid))
if not s then return fail('NOT_IN_SESSION') end
if s.host ~= pid then return fail('NOT_HOST') end
if s.state ~= 'WAITING' then return fail('SESSION_NOT_WAITING') end
if target == pid then return fail('BAD_REQUEST') end
if not member_index(s, target) then return fail('PLAYER_NOT_IN_SESSION') end
local after = remove_member(s, target, 'kicked') -- the host stays: never deletes
local tp = load(pkey(target))
if tp then
  if tp.conn == '' then
    redis.call('DEL', pkey(target))
  else
    tp.sid = nil
    save(pkey(target), tp)
  end
end
return ok(after)
