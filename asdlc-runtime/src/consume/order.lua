-- Per-key ordering, shared by the steps that place, check or release ordered entries
-- (prepended to each).
--
-- A handler ordered by a key (a session, a task) handles the events of one key one at a
-- time and in stream order, whichever consumer of its group reads them. The state of a
-- stream and group is one hash in the stream's slot, `<ns>:order:<group>`:
--   cursor        the last entry id placed: every pending entry up to it is in its queue
--   held          how many queued entries are not their queue's head: held back behind an
--                 earlier entry of their key. Only a push behind another entry and the
--                 release of a head with a successor change it, so a call whose queues each
--                 hold one entry leaves it alone.
--   about         what the hash holds (ASDLC_ORDER_ABOUT, below)
--   <key>         the queue of one order key, named after it (`session:<id>`, `task:<id>`,
--                 `key:<k>`): its head, the earliest of its placed, unfinished entries,
--                 and, when it holds more than one, a space and its tail, the latest
--                 ('<head>' or '<head> <tail>'). The head is the key's hold.
--   n:<id>        the entry after `id` in its queue, for each queued entry but a tail
-- (An order key always starts with its kind, so it is never one of the other fields.)
-- A queue is a linked list, so pushing an entry, dropping the head and telling whether an
-- entry is the head each read and write a field or two, whatever the queue's length (a key
-- held back by a retry may gather many entries); a queue of one entry, the common case, is
-- its key's field alone.
-- One hash, not a key per queue: every key a function touches is declared in its KEYS, and
-- the begin step places entries read by other consumers, whose keys no client declared.
-- Who is handling a queue's head, and until when, is the head's in-flight lease
-- (leases.lua): a hold follows the deadline and claim discipline of leases, so a crashed
-- consumer's head entry is claimed once idle for `claim_idle`, and runs before the later
-- entries of its key.

-- How long the order hash outlives its last write (as the lease hash).
local ASDLC_ORDER_MS = 86400000

-- The value of the `about` field. The hash has a field for each in-flight ordered entry,
-- often hundreds; in the server's compact listpack encoding (a hash of up to 128 or 512
-- short fields, by default) every field read or write scans them all. One value longer
-- than `hash-max-listpack-value` (64 bytes by default) keeps the hash in the hashtable
-- encoding from its first write, where a field is found at once.
local ASDLC_ORDER_ABOUT =
  'asdlc per-key order: cursor, held, <order key> = head [tail], n:<id> = the next id'

-- The two numbers of an entry id ('<ms>-<seq>'); both fit a Lua number exactly.
local function asdlc_id_parts(id)
  local dash = string.find(id, '-', 1, true)
  if not dash then
    return tonumber(id) or 0, 0
  end
  return tonumber(string.sub(id, 1, dash - 1)) or 0, tonumber(string.sub(id, dash + 1)) or 0
end

-- Whether entry id `a` comes before `b` in the stream. Costs four number conversions: the
-- steps compare ids only where string equality cannot answer.
local function asdlc_id_less(a, b)
  local am, as = asdlc_id_parts(a)
  local bm, bs = asdlc_id_parts(b)
  return am < bm or (am == bm and as < bs)
end

-- A call's view of the order hash `hash`: the cursor, the held-back count and the queues of
-- `keys` (order keys, repeats allowed: a repeat reads the same value twice) read with one
-- command; other queues and the links are read when first needed. A queue is held as its
-- field's value (false: no queue), so the common cases, a push into an empty queue and the
-- release of a queue's only entry, are a comparison and an assignment. Each changed field
-- is written back once, by asdlc_order_close.
local function asdlc_order_open(hash, keys)
  local o = { hash = hash, q = {}, after = {}, dirty = {}, relinked = {} }
  local got = redis.call('HMGET', hash, 'cursor', 'held', 'about', unpack(keys))
  o.cursor = got[1] or '0-0'
  o.held = tonumber(got[2]) or 0
  o.held_read = o.held
  o.about = got[3]
  for j, key in ipairs(keys) do
    o.q[key] = got[3 + j]
  end
  return o
end

-- The value of the queue of `key` ('<head>' or '<head> <tail>'), or false.
local function asdlc_order_value(o, key)
  local v = o.q[key]
  if v == nil then
    v = redis.call('HGET', o.hash, key)
    o.q[key] = v
  end
  return v
end

-- The head and tail of a queue's value.
local function asdlc_order_ends(v)
  local sp = string.find(v, ' ', 1, true)
  if sp then
    return string.sub(v, 1, sp - 1), string.sub(v, sp + 1)
  end
  return v, v
end

-- Sets the queue of `key` to run from `head` to `tail` (false: no queue).
local function asdlc_order_set(o, key, head, tail)
  if not head then
    o.q[key] = false
  elseif head == tail then
    o.q[key] = head
  else
    o.q[key] = head .. ' ' .. tail
  end
  o.dirty[key] = true
end

-- The entry after `id` in its queue, or false.
local function asdlc_order_next(o, id)
  local v = o.after[id]
  if v == nil then
    v = redis.call('HGET', o.hash, 'n:' .. id)
    o.after[id] = v
  end
  return v
end

local function asdlc_order_link(o, id, after)
  o.after[id] = after
  o.relinked[id] = true
end

-- Appends `id` to the queue of `key`; true if the queue was empty (`id` is its head).
local function asdlc_order_push(o, key, id)
  local v = asdlc_order_value(o, key)
  o.dirty[key] = true
  if not v then
    o.q[key] = id
    return true
  end
  local head, tail = asdlc_order_ends(v)
  asdlc_order_link(o, tail, id)
  o.q[key] = head .. ' ' .. id
  o.held = o.held + 1
  return false
end

-- The first id of the queue of `key`, or nil.
local function asdlc_order_head(o, key)
  local v = asdlc_order_value(o, key)
  if not v then
    return nil
  end
  return (asdlc_order_ends(v))
end

-- Removes `id` from the queue of `key`, if it is there.
local function asdlc_order_drop(o, key, id)
  local v = asdlc_order_value(o, key)
  if not v then
    return
  end
  if v == id then
    -- Its only entry.
    asdlc_order_set(o, key, false)
    return
  end
  local head, tail = asdlc_order_ends(v)
  if head == id then
    asdlc_order_set(o, key, asdlc_order_next(o, id) or tail, tail)
    asdlc_order_link(o, id, false)
  elseif head == tail or asdlc_id_less(id, head) then
    -- Not there: an entry committed again after its queue moved on, or one that ran without
    -- being in this queue (placed by another consumer under another key).
    return
  else
    -- Not the head, as above, but maybe in the queue: it is in stream order, so the walk
    -- stops at the first later entry.
    local prev = head
    while true do
      if prev == tail then
        return
      end
      local cur = asdlc_order_next(o, prev)
      if not cur then
        return
      end
      if cur == id then
        break
      end
      if asdlc_id_less(id, cur) then
        return
      end
      prev = cur
    end
    if id == tail then
      asdlc_order_set(o, key, head, prev)
      asdlc_order_link(o, prev, false)
    else
      asdlc_order_link(o, prev, asdlc_order_next(o, id))
      asdlc_order_link(o, id, false)
    end
  end
  -- One entry fewer behind a head: the successor of a released head is the head now.
  o.held = o.held - 1
end

-- Writes the call's changes back, with one command for the fields removed and one for those
-- set (and keeps the hash from expiring while it is written to); `cursor` is the new cursor,
-- or nil.
local function asdlc_order_close(o, cursor)
  local set, del = {}, {}
  for key in pairs(o.dirty) do
    local v = o.q[key]
    if v then
      set[#set + 1] = key
      set[#set + 1] = v
    else
      del[#del + 1] = key
    end
  end
  for id in pairs(o.relinked) do
    local after = o.after[id]
    if after then
      set[#set + 1] = 'n:' .. id
      set[#set + 1] = after
    else
      del[#del + 1] = 'n:' .. id
    end
  end
  if cursor then
    set[#set + 1] = 'cursor'
    set[#set + 1] = cursor
  end
  if o.held ~= o.held_read then
    set[#set + 1] = 'held'
    set[#set + 1] = string.format('%d', o.held)
  end
  if #del > 0 then
    redis.call('HDEL', o.hash, unpack(del))
  end
  if #set > 0 then
    if not o.about then
      set[#set + 1] = 'about'
      set[#set + 1] = ASDLC_ORDER_ABOUT
    end
    redis.call('HSET', o.hash, unpack(set))
    if redis.call('PTTL', o.hash) < ASDLC_ORDER_MS / 2 then
      redis.call('PEXPIRE', o.hash, ASDLC_ORDER_MS)
    end
  end
end
