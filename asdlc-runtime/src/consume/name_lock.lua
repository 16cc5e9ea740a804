-- The lock that keeps a consumer name to one live process.
-- KEYS[1] lock key, KEYS[2] the stream's lock marker
-- ARGV: token, client id, ttl ms, mode, expected value (takeover only)
-- The value is '<token>|<state>|<client id>|<renewed at, server ms>'. The lock lapses `ttl`
-- after its last renewal; the key itself lives a day longer, so whoever takes a lapsed name
-- learns the token of the process that held it (and may take back that process's leases).
-- State 'H' is a holder, 'P' a newcomer on probation: it found the name free on a server that
-- may have just lost its data (the marker, a key without expiry that every claim writes, is
-- missing: a restart without persistence, or a first start), and waits to see whether a live
-- holder renews it. Where the marker is present, a missing lock means no holder for a day.
-- The time changes with every renewal, so a newcomer that sees the value change knows the
-- holder is alive.
-- Replies are {1, predecessor token or '', 1 if on probation} on success, {0, current value}
-- when refused:
-- claim:    a free or lapsed name is taken (on probation where the data may be new); ours
--           already: renewed
-- confirm:  ends our probation (refused if a live holder renewed meanwhile)
-- refresh:  renews our lock (re-taking it if it lapsed, or from a newcomer on probation)
-- takeover: replaces the lock if it still holds the expected value (of a process found dead)
-- release:  deletes our lock
local token, client, ttl, mode = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = redis.call('GET', KEYS[1])

-- token, state, renewed-at of a value
local function parse(v)
  local a = string.find(v, '|', 1, true)
  if not a then return v, 'H', 0 end
  local state = string.sub(v, a + 1, a + 1)
  local stamp = tonumber(string.match(v, '|(%d+)$')) or 0
  return string.sub(v, 1, a - 1), state, stamp
end

local holder, state, stamp = nil, nil, 0
if current then holder, state, stamp = parse(current) end
local lapsed = current and stamp + ttl <= now
local mine = holder == token

local function set(s, pred)
  local v = token .. '|' .. s .. '|' .. client .. '|' .. string.format('%d', now)
  redis.call('SET', KEYS[1], v, 'PX', ttl + 86400000)
  return { 1, pred or '', s == 'P' and 1 or 0 }
end

if mode == 'claim' then
  if not current then
    if redis.call('SET', KEYS[2], string.format('%d', now), 'NX') then
      return set('P')
    end
    return set('H')
  end
  if mine then
    return set(state)
  end
  if lapsed then
    return set('H', holder)
  end
  return { 0, current }
elseif mode == 'confirm' then
  if mine then
    return set('H')
  end
  return { 0, current or '' }
elseif mode == 'refresh' then
  if (not current) or mine or lapsed or state == 'P' then
    redis.call('SET', KEYS[2], string.format('%d', now), 'NX')
    return set('H')
  end
  return { 0, current }
elseif mode == 'takeover' then
  if current == ARGV[5] then
    return set('H', holder)
  end
  return { 0, current or '' }
elseif mode == 'release' then
  if mine then
    redis.call('DEL', KEYS[1])
    return { 1, '' }
  end
  return { 0, current or '' }
end
return redis.error_reply('asdlc name lock: unknown mode ' .. tostring(mode))
