-- Per-key ordering, shared by the steps that place, check or release ordered entries
-- (prepended to each).
--
-- A handler ordered by a key (a session, a task) handles the events of one key one at a
-- time and in stream order, whichever consumer of its group reads them. The state of a
-- stream and group is one hash in the stream's slot, `<ns>:order:<group>`:
--   cursor        the last entry id placed: every pending entry up to it is in its queue
--   queued, keys  how many entries are queued, and under how many keys (so `queued - keys`
--                 entries are held back behind an earlier entry of their key)
--   k:<key>       the queue of one order key (`session:<id>`, `task:<id>`, `key:<k>`): the
--                 ids of its placed, unfinished entries, in stream order, separated by
--                 spaces. Its head is the key's hold.
-- One hash, not a key per queue: every key a function touches is declared in its KEYS, and
-- the begin step places entries read by other consumers, whose keys no client declared.
-- Who is handling a queue's head, and until when, is the head's in-flight lease
-- (leases.lua): a hold follows the deadline and claim discipline of leases, so a crashed
-- consumer's head entry is claimed once idle for `claim_idle`, and runs before the later
-- entries of its key.

-- How long the order hash outlives its last write (as the lease hash).
local ASDLC_ORDER_MS = 86400000

-- The two numbers of an entry id ('<ms>-<seq>'); both fit a Lua number exactly.
local function asdlc_id_parts(id)
  local dash = string.find(id, '-', 1, true)
  if not dash then
    return tonumber(id) or 0, 0
  end
  return tonumber(string.sub(id, 1, dash - 1)) or 0, tonumber(string.sub(id, dash + 1)) or 0
end

-- Whether entry id `a` comes before `b` in the stream.
local function asdlc_id_less(a, b)
  local am, as = asdlc_id_parts(a)
  local bm, bs = asdlc_id_parts(b)
  return am < bm or (am == bm and as < bs)
end

-- A call's view of the queues of `hash`: each read once, written back once by
-- asdlc_order_close.
local function asdlc_order_open(hash)
  return { hash = hash, q = {}, dirty = {}, queued = 0, keys = 0 }
end

local function asdlc_order_get(o, key)
  local v = o.q[key]
  if v == nil then
    v = redis.call('HGET', o.hash, 'k:' .. key) or false
    o.q[key] = v
  end
  return v
end

local function asdlc_order_put(o, key, v)
  o.q[key] = v
  o.dirty[key] = true
end

-- Appends `id` to the queue of `key`.
local function asdlc_order_push(o, key, id)
  local v = asdlc_order_get(o, key)
  if v then
    asdlc_order_put(o, key, v .. ' ' .. id)
  else
    asdlc_order_put(o, key, id)
    o.keys = o.keys + 1
  end
  o.queued = o.queued + 1
end

-- The first id of the queue of `key`, or nil.
local function asdlc_order_head(o, key)
  local v = asdlc_order_get(o, key)
  if not v then
    return nil
  end
  local sp = string.find(v, ' ', 1, true)
  return sp and string.sub(v, 1, sp - 1) or v
end

-- Removes `id` from the queue of `key`, if it is there.
local function asdlc_order_drop(o, key, id)
  local v = asdlc_order_get(o, key)
  if not v then
    return
  end
  local padded = ' ' .. v .. ' '
  local s, e = string.find(padded, ' ' .. id .. ' ', 1, true)
  if not s then
    return
  end
  local rest = string.sub(string.sub(padded, 1, s) .. string.sub(padded, e + 1), 2, -2)
  if rest == '' then
    asdlc_order_put(o, key, false)
    o.keys = o.keys - 1
  else
    asdlc_order_put(o, key, rest)
  end
  o.queued = o.queued - 1
end

-- Writes the call's changes back (and keeps the hash from expiring while it is used);
-- `cursor` is the new cursor, or nil.
local function asdlc_order_close(o, cursor)
  local set, del = {}, {}
  for key in pairs(o.dirty) do
    local v = o.q[key]
    if v then
      set[#set + 1] = 'k:' .. key
      set[#set + 1] = v
    else
      del[#del + 1] = 'k:' .. key
    end
  end
  if cursor then
    set[#set + 1] = 'cursor'
    set[#set + 1] = cursor
  end
  if #set > 0 then
    redis.call('HSET', o.hash, unpack(set))
  end
  if #del > 0 then
    redis.call('HDEL', o.hash, unpack(del))
  end
  if o.queued ~= 0 then
    redis.call('HINCRBY', o.hash, 'queued', o.queued)
  end
  if o.keys ~= 0 then
    redis.call('HINCRBY', o.hash, 'keys', o.keys)
  end
  if #set > 0 and redis.call('PTTL', o.hash) < ASDLC_ORDER_MS / 2 then
    redis.call('PEXPIRE', o.hash, ASDLC_ORDER_MS)
  end
end
