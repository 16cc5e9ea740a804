-- The lock that keeps a consumer name to one live process.
-- KEYS[1] lock key
-- ARGV: token, value (token|client id), ttl ms, mode, expected value (takeover only)
-- acquire:  set if free; returns 1, or the current value
-- refresh:  extend (or re-take, if it expired) our lock; returns 1, or 0 if another holds it
-- takeover: replace the lock if it still holds the expected (dead) value; returns 1 or 0
-- release:  delete our lock; returns 1 or 0
local token, value, ttl, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local current = redis.call('GET', KEYS[1])
local mine = current and string.sub(current, 1, #token + 1) == token .. '|'
if mode == 'acquire' then
  if not current then
    redis.call('SET', KEYS[1], value, 'PX', ttl)
    return 1
  end
  if mine then
    redis.call('SET', KEYS[1], value, 'PX', ttl)
    return 1
  end
  return current
elseif mode == 'refresh' then
  if (not current) or mine then
    redis.call('SET', KEYS[1], value, 'PX', ttl)
    return 1
  end
  return 0
elseif mode == 'takeover' then
  if current == ARGV[5] then
    redis.call('SET', KEYS[1], value, 'PX', ttl)
    return 1
  end
  return 0
elseif mode == 'release' then
  if mine then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
return redis.error_reply('asdlc name lock: unknown mode ' .. tostring(mode))
