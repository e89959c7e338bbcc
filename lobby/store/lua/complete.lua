-- ARGV: 3 session_id, 4 reason. The match is over (or an operator ends it).
local s = load(skey(ARGV[3]))
if not s then return fail('SESSION_NOT_FOUND') end
return outcome(close_session(s, ARGV[4]), true)
