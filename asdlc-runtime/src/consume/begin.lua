-- Begin step, one call per batch: for each entry, acknowledge it if its key is already
-- processed by this group, otherwise take the key's in-flight lease and count the attempt.
-- KEYS[1] stream, KEYS[2] lease hash, then the mark hashes of the entries' fingerprints
-- ARGV: marks prefix, width, bucket, ttl, layouts (marks.lua), group, token, predecessor
--       token ('' for none), lease ms, then (entry id, fingerprint) for each entry
--       (fingerprints distinct within a call). Called from begin_ordered.lua with `ITEMS`, the
--       number of each entry among the call's items (marks.lua), when it begins some only.
-- Returns one code per entry: 0 duplicate (acknowledged); -1 another delivery holds the
-- key's live lease (the entry stays pending and is checked again later); n > 0 the lease is
-- taken and the handler is about to run its attempt n.
local group, token, pred, lease_ms = ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local now = asdlc_now_ms()
local marks = asdlc_marks(now, KEYS, ARGV)
local out, acks, want, fps, gone = {}, {}, {}, {}, {}
for i = 10, #ARGV, 2 do
  local id, fp = ARGV[i], ARGV[i + 1]
  local item = i / 2 - 4
  if ITEMS then
    item = ITEMS[item]
  end
  if asdlc_is_marked(marks, fp, item) then
    acks[#acks + 1] = id
    gone[#gone + 1] = fp
    out[#out + 1] = 0
  else
    out[#out + 1] = -1
    want[#want + 1] = #out
    fps[#fps + 1] = fp
  end
end
if #want > 0 then
  -- The hash's `about` field first: without it, it is added (leases.lua).
  local held = redis.call('HMGET', KEYS[2], 'about', unpack(fps))
  local take = {}
  if not held[1] then
    take[1], take[2] = 'about', ASDLC_LEASE_ABOUT
  end
  local now_text = asdlc_ms_text(now)
  local deadline = asdlc_ms_text(now + lease_ms)
  for j = 1, #want do
    local k = want[j]
    local id = ARGV[10 + 2 * (k - 1)]
    -- The holder names the delivery, not just the process: a second copy of the same key
    -- in this very consumer must wait too. The same delivery, under this run's token or the
    -- token of the dead process whose name this run took over, takes it again.
    local value = held[j + 1]
    if not value then
      -- No lease and no count yet, the common case: the first attempt, in one concatenation.
      take[#take + 1] = fps[j]
      take[#take + 1] = deadline .. '|1|' .. token .. '|' .. id
      out[k] = 1
    else
      local holder, live, attempts = asdlc_lease_holder(value, now_text)
      local again = holder ~= nil
        and (holder == token .. '|' .. id or (pred ~= '' and holder == pred .. '|' .. id))
      if not live or again then
        take[#take + 1] = fps[j]
        take[#take + 1] = asdlc_lease_value(deadline, attempts + 1, token .. '|' .. id)
        out[k] = attempts + 1
      end
    end
  end
  if #take > 0 then
    redis.call('HSET', KEYS[2], unpack(take))
    asdlc_keep_leases(KEYS[2], lease_ms)
  end
end
if #acks > 0 then
  redis.call('XACK', KEYS[1], group, unpack(acks))
  -- A processed key needs no lease or attempt count any more: whatever a crashed delivery
  -- left behind goes with it.
  redis.call('HDEL', KEYS[2], unpack(gone))
  asdlc_forget_if_empty(KEYS[2])
end
return out
