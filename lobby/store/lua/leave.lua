-- ARGV: 3 player_id, 4 session_id (the player's pointer)
local s, refused = member_session(ARGV[4], ARGV[3])
if refused then return fail(refused) end
return outcome(remove_member(s, ARGV[3], 'left'))
