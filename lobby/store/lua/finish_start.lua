-- ARGV: 3 session_id, 4 server_id, 5 endpoint. The caller then points the
-- server's own key (srv:{ID}) at the session.
if not local_keys(session_keys(ARGV[3])) then return MIGRATING end
local s = load(skey(ARGV[3]))
if s and not index_local(s) then return MIGRATING end
if not s or s.state ~= 'CONNECTING' or s.server_id ~= NULL then return {'OK', false} end
s.server_id = ARGV[4]
s.endpoint = ARGV[5]
touch(s)
save(skey(s.id), s)
publish(s, {e = 'session_started', server_id = s.server_id, server_endpoint = s.endpoint})
return ok(s)
