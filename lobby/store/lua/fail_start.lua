-- ARGV: 3 session_id, 4 error code, 5 message, 6 hold ms
if not local_keys(session_keys(ARGV[3])) then return MIGRATING end
local s = load(skey(ARGV[3]))
if s and not index_local(s) then return MIGRATING end
if not s or s.state ~= 'CONNECTING' or s.server_id ~= NULL then return {'OK', false} end
change_state(s, 'WAITING')
s.started = NULL
local hold = tonumber(ARGV[6])
for _, m in ipairs(s.members) do
  -- A failed start asks everyone to confirm again.
  m.ready = nil
  -- Back in the waiting room, players who dropped meanwhile get their hold again.
  if seat_conn(s, m.id) == '' then
    redis.call('ZADD', HOLDS, NOW + hold, held(s.id, m.id))
    m.off = NOW + hold
  end
end
save(skey(s.id), s)
publish(s, {e = 'session_start_failed', error = {code = ARGV[4], message = ARGV[5]}})
return ok(s)
