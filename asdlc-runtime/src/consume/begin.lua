-- Begin step, one call per batch: for each entry, acknowledge it if its key is already
-- processed by this group, otherwise take the key's in-flight lease.
-- KEYS[1] stream
-- ARGV: marks prefix, width, nbuckets, ttl, shards, group, lease prefix, consumer, lease ms,
--       then (entry id, fingerprint, fingerprint hex) for each entry.
-- Returns one code per entry: 0 duplicate (acknowledged), 1 lease taken, 2 another delivery
-- holds the lease (the entry stays pending and is checked again later).
local prefix, width, nbuckets = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local shards = tonumber(ARGV[5])
local group, lease_prefix, consumer, lease_ms = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local bucket = math.floor(asdlc_now_ms() / width)
local out = {}
for i = 10, #ARGV, 3 do
  local id, fp, fphex = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if asdlc_is_marked(prefix, bucket, nbuckets, fp, shards) then
    redis.call('XACK', KEYS[1], group, id)
    out[#out + 1] = 0
  else
    local lease = lease_prefix .. fphex
    -- The holder names the delivery, not just the consumer: a second copy of the same key
    -- in this very consumer must wait too.
    local holder = consumer .. '|' .. id
    if redis.call('SET', lease, holder, 'NX', 'PX', lease_ms) then
      out[#out + 1] = 1
    elseif redis.call('GET', lease) == holder then
      redis.call('PEXPIRE', lease, lease_ms)
      out[#out + 1] = 1
    else
      out[#out + 1] = 2
    end
  end
end
return out
