-- ARGV: 3 host player_id, 4 target player_id, 5 '1' to ban the target for the
-- session's life, 6 session_id. The caller then releases the target's player.
local pid, target = ARGV[3], ARGV[4]
local s, refused = hosted_waiting_session(ARGV[6], pid)
if refused then return fail(refused) end
if target == pid then return fail('BAD_REQUEST') end
if not member_index(s, target) then return fail('PLAYER_NOT_IN_SESSION') end
if ARGV[5] == '1' then
  if not s.bans then s.bans = {} end
  s.bans[target] = true
end
local after = remove_member(s, target, 'kicked') -- the host stays: never deletes
return ok(after)
