-- IdempotencyTracker::mark_many: check-and-mark many fingerprints atomically.
-- KEYS[1] stream (for routing), then the layout keys and mark hashes of the fingerprints
-- ARGV: prefix, width, bucket, ttl, layouts (marks.lua), then one fingerprint per key.
-- Returns one code per key: 1 if this call marked it, 0 if it was already processed.
local marks = asdlc_marks(asdlc_now_ms(), KEYS, ARGV)
local out = {}
for i = 6, #ARGV do
  local fp = ARGV[i]
  if asdlc_is_marked(marks, fp, i - 5) then
    out[#out + 1] = 0
  else
    asdlc_set_mark(marks, fp, i - 5)
    out[#out + 1] = 1
  end
end
return out
