-- Shared by every function of the library (prepended to them).

-- The keys a call declared in KEYS, as a set (each key -> its first place in KEYS): a
-- function checks each key it builds itself (a mark hash, a staged effect's key) against
-- it, so it never touches an undeclared key.
local function asdlc_declared(keys)
  local set = {}
  for i, k in ipairs(keys) do set[k] = set[k] or i end
  return set
end

-- Raises an error unless `key` was declared.
local function asdlc_check_declared(declared, key, what)
  if not declared[key] then
    error(redis.error_reply('ERR asdlc: ' .. what .. ' ' .. key .. ' was not declared in KEYS'))
  end
end

-- Scheduled events: a sorted set (id -> due time in ms) and a hash (id -> the entry's fields,
-- packed as `<length>:<bytes>` for each name and value), both in the stream's slot.
-- Schedules `blob` under `id` unless that id is scheduled already (the first schedule of an
-- id stands); returns 1 if scheduled, 0 if it was there.
local function asdlc_schedule(zset, hash, id, due, blob)
  if redis.call('HSETNX', hash, id, blob) == 0 then
    return 0
  end
  redis.call('ZADD', zset, due, id)
  return 1
end

-- The arguments of `XADD stream [MAXLEN ~ maxlen] * fields...` ('' maxlen: no trim).
local function asdlc_xadd_args(stream, maxlen, fields)
  local args = { 'XADD', stream }
  if maxlen ~= '' then
    args[#args + 1] = 'MAXLEN'
    args[#args + 1] = '~'
    args[#args + 1] = maxlen
  end
  args[#args + 1] = '*'
  for _, f in ipairs(fields) do args[#args + 1] = f end
  return args
end

-- The fields packed by the client, back as a list: name, value, name, value...
local function asdlc_unpack_fields(blob)
  local out, i = {}, 1
  while i <= #blob do
    local colon = string.find(blob, ':', i, true)
    local n = tonumber(string.sub(blob, i, colon - 1))
    out[#out + 1] = string.sub(blob, colon + 1, colon + n)
    i = colon + n + 1
  end
  return out
end
