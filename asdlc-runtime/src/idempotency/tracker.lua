-- IdempotencyTracker: check, or check-and-mark, one fingerprint atomically.
-- ARGV: prefix, width, nbuckets, ttl, shards, fp, mode ('check' or 'mark')
-- Returns 1 if the key was already processed, 0 if not (and, in mark mode, marks it).
local prefix, width, nbuckets = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, shards, fp, mode = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7]
local bucket = math.floor(asdlc_now_ms() / width)
if asdlc_is_marked(prefix, bucket, nbuckets, fp, shards) then
  return 1
end
if mode == 'mark' then
  asdlc_set_mark(prefix, bucket, width, ttl, fp, shards)
end
return 0
