-- Takes back entries this consumer left pending for a retry: only those it still owns (a
-- peer may have claimed one meanwhile), incrementing their delivery count.
-- KEYS[1] stream
-- ARGV: group, consumer, then entry ids
-- Returns the claimed entries, as XCLAIM does.
local group, consumer = ARGV[1], ARGV[2]
local mine = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], group, ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] == consumer then
    mine[#mine + 1] = ARGV[i]
  end
end
if #mine == 0 then
  return {}
end
return redis.call('XCLAIM', KEYS[1], group, consumer, 0, unpack(mine))
