-- Removes a consumer from its group only if it owns no pending entry and no live process
-- holds its name: a consumer that still owns entries is never removed.
-- KEYS[1] stream, KEYS[2] the consumer's name lock
-- ARGV: group, consumer, lock ttl ms
local lock = redis.call('GET', KEYS[2])
if lock then
  local renewed = tonumber(string.match(lock, '|(%d+)$')) or 0
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if renewed + tonumber(ARGV[3]) > now then
    return 0
  end
end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
