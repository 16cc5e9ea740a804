-- IdempotencyTracker::mark_many: check-and-mark many fingerprints atomically.
-- ARGV: prefix, width, nbuckets, ttl, shards, then one fingerprint per key.
-- Returns one code per key: 1 if this call marked it, 0 if it was already processed.
local prefix, width, nbuckets = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, shards = tonumber(ARGV[4]), tonumber(ARGV[5])
local bucket = math.floor(asdlc_now_ms() / width)
local out = {}
for i = 6, #ARGV do
  local fp = ARGV[i]
  if asdlc_is_marked(prefix, bucket, nbuckets, fp, shards) then
    out[#out + 1] = 0
  else
    asdlc_set_mark(prefix, bucket, width, ttl, fp, shards)
    out[#out + 1] = 1
  end
end
return out
