-- Commit step, one call per batch of finished entries. Each record is applied atomically
-- with its acknowledgement.
-- KEYS[1] stream, KEYS[2] dead-letter stream
-- ARGV: marks prefix, width, nbuckets, ttl, shards, group, lease prefix, consumer, then records:
--   S id fp fphex n  (cmd key nargs arg...)*n   success: mark, apply effects, ack, drop lease
--   R id fphex                                  retry: drop the lease, leave the entry pending
--   D id fphex n  (field value)*n               dead letter: XADD, ack, drop lease
--   A id                                        acknowledge only
-- Returns one value per record: 1 done; 0 (S only) already processed: acknowledged, effects
-- dropped; or an error text (S only) when an effect was refused: nothing of it applied.
local prefix, width, nbuckets = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, shards = tonumber(ARGV[4]), tonumber(ARGV[5])
local group, lease_prefix, consumer = ARGV[6], ARGV[7], ARGV[8]
local bucket = math.floor(asdlc_now_ms() / width)
local wants = {
  SET = 'string', INCRBY = 'string', HSET = 'hash', HINCRBY = 'hash',
  SADD = 'set', RPUSH = 'list', DEL = false, EXPIRE = false,
}

local function release(id, fphex)
  if fphex ~= '' then
    local lease = lease_prefix .. fphex
    if redis.call('GET', lease) == consumer .. '|' .. id then
      redis.call('DEL', lease)
    end
  end
end

-- Checks every effect of a record before applying any, so a refused effect leaves nothing
-- half-applied.
local function check_effects(first, n)
  local i = first
  for _ = 1, n do
    local cmd, key, nargs = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    local want = wants[cmd]
    if want == nil then
      return nil, 'command ' .. cmd .. ' cannot be staged'
    end
    if want then
      local t = redis.call('TYPE', key)['ok']
      if t ~= 'none' and t ~= want then
        return nil, cmd .. ' on ' .. key .. ': key holds a ' .. t
      end
      if cmd == 'INCRBY' and t == 'string' and not tonumber(redis.call('GET', key)) then
        return nil, 'INCRBY on ' .. key .. ': value is not an integer'
      end
    end
    i = i + 3 + nargs
  end
  return i, nil
end

local out = {}
local i = 9
while i <= #ARGV do
  local kind = ARGV[i]
  if kind == 'S' then
    local id, fp, fphex, n = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
    local first = i + 5
    local after, err = check_effects(first, n)
    if err then
      -- Skip the record's effects; the entry stays pending for a retry.
      local j = first
      for _ = 1, n do j = j + 3 + tonumber(ARGV[j + 2]) end
      i = j
      out[#out + 1] = err
    else
      i = after
      if asdlc_is_marked(prefix, bucket, nbuckets, fp, shards) then
        out[#out + 1] = 0
      else
        local j = first
        for _ = 1, n do
          local nargs = tonumber(ARGV[j + 2])
          local args = { ARGV[j], ARGV[j + 1] }
          for a = 1, nargs do args[#args + 1] = ARGV[j + 2 + a] end
          redis.call(unpack(args))
          j = j + 3 + nargs
        end
        asdlc_set_mark(prefix, bucket, width, ttl, fp, shards)
        out[#out + 1] = 1
      end
      redis.call('XACK', KEYS[1], group, id)
      release(id, fphex)
    end
  elseif kind == 'R' then
    release(ARGV[i + 1], ARGV[i + 2])
    out[#out + 1] = 1
    i = i + 3
  elseif kind == 'D' then
    local id, fphex, n = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
    local args = { 'XADD', KEYS[2], '*' }
    for a = 1, 2 * n do args[#args + 1] = ARGV[i + 3 + a] end
    redis.call(unpack(args))
    redis.call('XACK', KEYS[1], group, id)
    release(id, fphex)
    out[#out + 1] = 1
    i = i + 4 + 2 * n
  elseif kind == 'A' then
    redis.call('XACK', KEYS[1], group, ARGV[i + 1])
    out[#out + 1] = 1
    i = i + 2
  else
    return redis.error_reply('asdlc commit: unknown record kind ' .. tostring(kind))
  end
end
return out
