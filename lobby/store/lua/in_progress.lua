-- ARGV: 3 session_id. The game server reports that the match runs.
if not local_keys(session_keys(ARGV[3])) then return MIGRATING end
local s = load(skey(ARGV[3]))
if s and not index_local(s) then return MIGRATING end
if not s then return fail('SESSION_NOT_FOUND') end
if s.state == 'IN_PROGRESS' then return ok(s) end -- a retried callback is harmless
if s.state ~= 'CONNECTING' then return fail('SESSION_NOT_CONNECTING') end
change_state(s, 'IN_PROGRESS')
save(skey(s.id), s)
publish(s, {e = 'session_in_progress'})
return ok(s)
