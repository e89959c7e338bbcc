-- ARGV: 3 host player_id, 4 target player_id, 5 '1' to ban the target for the session's life
local pid, target = ARGV[3], ARGV[4]
local s, refused = hosted_waiting_session(pid)
if refused then return fail(refused) end
if target == pid then return fail('BAD_REQUEST') end
if not member_index(s, target) then return fail('PLAYER_NOT_IN_SESSION') end
if ARGV[5] == '1' then
  if not s.bans then s.bans = {} end
  s.bans[target] = true
end
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
