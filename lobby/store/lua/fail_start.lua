-- ARGV: 3 session_id, 4 error code, 5 message, 6 hold ms
local s = load(skey(ARGV[3]))
if not s or s.state ~= 'CONNECTING' or s.server_id ~= NULL then return {'OK', false} end
change_state(s, 'WAITING')
s.started = NULL
save(skey(s.id), s)
-- Back in the waiting room, players who dropped meanwhile get their hold again.
for _, m in ipairs(s.members) do
  local mp = load(pkey(m.id))
  if mp and mp.conn == '' then redis.call('ZADD', HOLDS, NOW + tonumber(ARGV[6]), m.id) end
end
publish(s, {e = 'session_start_failed', error = {code = ARGV[4], message = ARGV[5]}})
return ok(s)
