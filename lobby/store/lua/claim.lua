-- A verified identity (a JWT's sub) takes its player on a new connection.
-- ARGV: 3 player_id, 4 token hash of the new resume token, 5 new conn id,
-- 6 name (for a new player). A new player is created and returned at once;
-- an existing one gets the new token hash and then goes through resume.lua,
-- which redis.py appends to this script: same rebind, `replaced` message and
-- player_reconnected as a resume. Returns resume.lua's reply, or
-- {'OK', player, false, 0, 'new'}.
local claimed = load(pkey(ARGV[3]))
if not claimed then
  claimed = {id = ARGV[3], name = ARGV[6], tokh = ARGV[4], conn = ARGV[5]}
  save(pkey(ARGV[3]), claimed)
  return {'OK', cjson.encode(claimed), false, 0, 'new'}
end
claimed.tokh = ARGV[4]
save(pkey(ARGV[3]), claimed)
