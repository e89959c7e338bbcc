-- ARGV: 3 host player_id, 4 changes JSON {name?, max?, pw? (hash or null: none),
-- attrs? (null deletes a key), vis?, locked?}, 5 indexed attribute keys (JSON or '*'),
-- 6 attribute limit, 7 session_id. Host only, WAITING only. Also rule?, minp? (start rule); any
-- update resets every ready flag: members confirm the new settings again.
local pid = ARGV[3]
local s, refused = hosted_waiting_session(ARGV[7], pid)
if refused then return fail(refused) end
local ch = cjson.decode(ARGV[4])
if ch.max ~= nil and ch.max < #s.members then return fail('MAX_BELOW_COUNT') end
local minp = ch.minp or s.minp or 1
if minp > (ch.max or s.max) then return fail('MIN_ABOVE_MAX') end
if ch.attrs ~= nil then
  local merged = merge_attrs(s.attrs, ch.attrs, tonumber(ARGV[6]))
  if not merged then return fail('TOO_MANY_ATTRIBUTES') end
  if not index_local(s, tokens_of(merged, ARGV[5])) then return MIGRATING end
  s.attrs = merged
end
if ch.name ~= nil then s.name = ch.name end
if ch.max ~= nil then s.max = ch.max end
if ch.pw ~= nil then s.pw = ch.pw end
if ch.vis ~= nil then s.vis = ch.vis end
if ch.locked ~= nil then s.locked = ch.locked end
-- Defaults are left out of the record, as create does.
if ch.rule ~= nil then
  if ch.rule == 'host' then s.rule = nil else s.rule = ch.rule end
end
if ch.minp ~= nil then
  if ch.minp > 1 then s.minp = ch.minp else s.minp = nil end
end
for _, m in ipairs(s.members) do m.ready = nil end
touch(s)
s.active = NOW
if ch.attrs ~= nil then reindex(s, ARGV[5]) else index_open(s) end
save(skey(s.id), s)
publish(s, {e = 'session_updated'})
return ok(s)
