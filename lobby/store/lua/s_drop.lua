-- ARGV: 3 player_id, 4 session_id, 5 the conn that closed, 6 hold ms.
-- Returns {'OK', record} when the member's seat is now held (the others were
-- told with player_disconnected), else {'NO'}.
if not local_keys(session_keys(ARGV[4])) then return MIGRATING end
local s = load(skey(ARGV[4]))
if s and drop_seat(s, ARGV[3], ARGV[5], tonumber(ARGV[6])) then return ok(s) end
return {'NO'}
