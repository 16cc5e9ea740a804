-- Per-key ordering, shared by the steps that place, check or release ordered entries
-- (prepended to each).
--
-- A handler ordered by a key (a session, a task) handles the events of one key one at a
-- time and in stream order, whichever consumer of its group reads them. Its state, per
-- stream and group, in the stream's slot:
--   <ns>:order:<group>         a hash: `cursor`, the last entry id placed; `queued`, the
--                              entries placed and not finished; `keys`, the order keys with
--                              any (so `queued - keys` entries are held back)
--   <ns>:order:<group>:<key>   a list per order key: the ids of its placed, unfinished
--                              entries, in stream order. Its head is the key's hold.
-- Who is handling the head, and until when, is the head's in-flight lease (leases.lua), so a
-- hold follows the same deadline and claim discipline as a lease: a crashed consumer's head
-- entry is claimed once idle for `claim_idle`, and runs before the key's later entries.

-- How long an order list or the order hash outlives its last write (as the lease hash).
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

-- Changes to the order hash's counts, applied once per call.
local function asdlc_order_delta()
  return { queued = 0, keys = 0 }
end

-- Drops `id` from the order list `list` (if it is there).
local function asdlc_order_drop(list, id, delta)
  if redis.call('LREM', list, 1, id) == 1 then
    delta.queued = delta.queued - 1
    if redis.call('EXISTS', list) == 0 then
      delta.keys = delta.keys - 1
    end
  end
end

-- Applies the counts (and keeps the order hash from expiring while it is used).
local function asdlc_order_counts(order, delta)
  if delta.queued ~= 0 then
    redis.call('HINCRBY', order, 'queued', delta.queued)
  end
  if delta.keys ~= 0 then
    redis.call('HINCRBY', order, 'keys', delta.keys)
  end
  if redis.call('PTTL', order) < ASDLC_ORDER_MS / 2 then
    redis.call('PEXPIRE', order, ASDLC_ORDER_MS)
  end
end
