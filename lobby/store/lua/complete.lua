-- ARGV: 3 session_id, 4 reason. The match is over (or an operator ends it).
-- The caller then releases the members' players and the code and server keys.
if not local_keys(session_keys(ARGV[3])) then return MIGRATING end
local s = load(skey(ARGV[3]))
if s and not index_local(s) then return MIGRATING end
if not s then return fail('SESSION_NOT_FOUND') end
return outcome(close_session(s, ARGV[4]), true)
