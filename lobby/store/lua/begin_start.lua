-- ARGV: 3 player_id, 4 session_id
local s, refused = hosted_waiting_session(ARGV[4], ARGV[3])
if refused then return fail(refused) end
local minp = tonumber(s.minp) or 1
if #s.members < minp then return {'ERR', 'NOT_ENOUGH_PLAYERS', tostring(minp)} end
if s.rule == 'all_ready' then
  local waiting = {}
  for _, m in ipairs(s.members) do
    if not m.ready then table.insert(waiting, m.name) end
  end
  if #waiting > 0 then return {'ERR', 'NOT_READY', table.concat(waiting, ', ')} end
end
change_state(s, 'CONNECTING')
s.started = NOW
-- Seats of a starting session are held for its life, so pending holds end here.
for _, m in ipairs(s.members) do
  redis.call('ZREM', HOLDS, held(s.id, m.id))
  if m.off then m.off = 0 end
end
save(skey(s.id), s)
return ok(s)
