-- Begin step, one call per batch: for each entry, acknowledge it if its key is already
-- processed by this group, otherwise take the key's in-flight lease.
-- KEYS[1] stream, KEYS[2] lease hash
-- ARGV: marks prefix, width, nbuckets, ttl, shards, group, consumer, lease ms, then
--       (entry id, fingerprint) for each entry (fingerprints distinct within a call).
-- Returns one code per entry: 0 duplicate (acknowledged), 1 lease taken, 2 another delivery
-- holds the lease (the entry stays pending and is checked again later).
local group, consumer, lease_ms = ARGV[6], ARGV[7], tonumber(ARGV[8])
local now = asdlc_now_ms()
local marks = asdlc_marks(now)
local out, acks, want, fps = {}, {}, {}, {}
for i = 9, #ARGV, 2 do
  local id, fp = ARGV[i], ARGV[i + 1]
  if asdlc_is_marked(marks, fp) then
    acks[#acks + 1] = id
    out[#out + 1] = 0
  else
    out[#out + 1] = 2
    want[#want + 1] = #out
    fps[#fps + 1] = fp
  end
end
if #want > 0 then
  local held = redis.call('HMGET', KEYS[2], unpack(fps))
  local take = {}
  local now_text = asdlc_ms_text(now)
  local prefix = asdlc_ms_text(now + lease_ms) .. '|' .. consumer .. '|'
  for j = 1, #want do
    local k = want[j]
    local id = ARGV[9 + 2 * (k - 1)]
    -- The holder names the delivery, not just the consumer: a second copy of the same key
    -- in this very consumer must wait too. A delivery that holds the lease already (a
    -- restarted consumer of the same name) takes it again.
    local free = not held[j]
    if not free then
      local holder, live = asdlc_lease_holder(held[j], now_text)
      free = not live or holder == consumer .. '|' .. id
    end
    if free then
      take[#take + 1] = fps[j]
      take[#take + 1] = prefix .. id
      out[k] = 1
    end
  end
  if #take > 0 then
    redis.call('HSET', KEYS[2], unpack(take))
    asdlc_keep_leases(KEYS[2], lease_ms)
  end
end
if #acks > 0 then
  redis.call('XACK', KEYS[1], group, unpack(acks))
end
return out
