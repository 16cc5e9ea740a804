-- IdempotencyTracker: check, or check-and-mark, one fingerprint atomically.
-- KEYS[1] stream (for routing), then the layout keys and mark hashes of the fingerprints
-- ARGV: prefix, width, bucket, ttl, layouts (marks.lua), fp, mode ('check' or 'mark')
-- Returns 1 if the key was already processed, 0 if not (and, in mark mode, marks it).
local fp, mode = ARGV[6], ARGV[7]
local marks = asdlc_marks(asdlc_now_ms(), KEYS, ARGV)
if asdlc_is_marked(marks, fp, 1) then
  return 1
end
if mode == 'mark' then
  asdlc_set_mark(marks, fp, 1)
end
return 0
