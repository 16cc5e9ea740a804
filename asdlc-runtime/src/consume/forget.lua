-- Removes a consumer from its group only if it owns no pending entry and no live process
-- holds its name: a consumer that still owns entries is never removed.
-- KEYS[1] stream
-- ARGV: group, consumer, name lock key
if redis.call('EXISTS', ARGV[3]) == 1 then
  return 0
end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
