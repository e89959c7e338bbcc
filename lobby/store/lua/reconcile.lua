-- ARGV: 3 JSON list of {id, name, tokh, conn, sid?}: live sockets of the calling
-- node, each with the session it believes it is in; 4 the store epoch the node
-- has synced with ('' = any). Run after the node was cut off from Redis (or
-- taken for dead): the store wins. A store of another epoch (emptied, not yet
-- rebuilt) must not judge anyone: {'EPOCH'}. Else, per socket in order, a
-- verdict and the session JSON or false:
--   'OK'       the store agrees (a socket dropped meanwhile is the player's again)
--   'REPLACED' the player is on another socket now
--   'OUT'      the player is not in that session any more (the record, if it lives)
if ARGV[4] ~= '' and redis.call('GET', P .. 'epoch') ~= ARGV[4] then return {'EPOCH'} end
local out = {}
for _, c in ipairs(cjson.decode(ARGV[3])) do
  local p = load(pkey(c.id))
  local verdict = 'OK'
  if not p then
    -- Its record expired (the node was taken for dead and the hold ran out).
    p = {id = c.id, name = c.name, tokh = c.tokh, conn = ''}
    if c.sid then
      local s = load(skey(c.sid))
      if s and member_index(s, c.id) then p.sid = c.sid end
    end
    set_conn(p, c.conn)
    save(pkey(c.id), p)
  elseif p.conn == '' then
    set_conn(p, c.conn)
    p.disc = nil
    redis.call('ZREM', HOLDS, c.id)
    save(pkey(c.id), p) -- a plain SET also drops the expiry of a session-less player
    -- As a resume: the others learn that the held seat's player is back.
    local s = p.sid and load(skey(p.sid))
    local i = s and member_index(s, c.id)
    if i and s.members[i].off then
      s.members[i].off = nil
      touch(s)
      save(skey(s.id), s)
      publish(s, {e = 'player_reconnected', player_id = c.id})
    end
  elseif p.conn ~= c.conn then
    verdict = 'REPLACED'
  end
  local raw = false
  if verdict == 'OK' and c.sid then
    raw = redis.call('GET', skey(c.sid))
    local s = raw and cjson.decode(raw)
    if p.sid ~= c.sid or not s or not member_index(s, c.id) then verdict = 'OUT' end
  end
  table.insert(out, verdict)
  table.insert(out, raw)
end
return out
