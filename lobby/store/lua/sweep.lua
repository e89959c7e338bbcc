-- ARGV: 3 limit. Returns a flat list: session_id, record JSON or false (deleted), ...
local due = redis.call('ZRANGEBYSCORE', HOLDS, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, pid in ipairs(due) do
  redis.call('ZREM', HOLDS, pid)
  local p = load(pkey(pid))
  if p and p.conn == '' and p.sid then
    local s = load(skey(p.sid))
    if s and s.state == 'WAITING' then
      local after = remove_member(s, pid, 'timeout')
      redis.call('DEL', pkey(pid))
      table.insert(out, s.id)
      if after then table.insert(out, cjson.encode(after)) else table.insert(out, false) end
    end
  end
end
return out
