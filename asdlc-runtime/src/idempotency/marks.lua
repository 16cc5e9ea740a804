-- Processed marks, shared by every script that reads or writes them (prepended to each).
--
-- A mark is one field of a small hash: the field is the 12-byte fingerprint of the
-- idempotency key, the value 1. Hashes are named <prefix><bucket>:<shard>, where the bucket
-- is the time slice (width ms) the mark was written in and the shard comes from the
-- fingerprint's first two bytes. Each hash expires `ttl` after its bucket ends, so a mark
-- lives between ttl and ttl + width; a lookup checks the `nbuckets` newest buckets. Small
-- hashes stay in Redis's compact listpack encoding: 20 to 40 bytes a mark instead of 100 or
-- more for a key per mark.

local function asdlc_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function asdlc_mark_key(prefix, bucket, fp, shards)
  local shard = (string.byte(fp, 1) * 256 + string.byte(fp, 2)) % shards
  return prefix .. bucket .. ':' .. shard
end

local function asdlc_is_marked(prefix, bucket, nbuckets, fp, shards)
  for b = bucket, bucket - nbuckets + 1, -1 do
    if redis.call('HEXISTS', asdlc_mark_key(prefix, b, fp, shards), fp) == 1 then
      return true
    end
  end
  return false
end

local function asdlc_set_mark(prefix, bucket, width, ttl, fp, shards)
  local key = asdlc_mark_key(prefix, bucket, fp, shards)
  if redis.call('HSET', key, fp, 1) == 1 then
    -- The same deadline for every mark of the bucket, so setting it again changes nothing;
    -- one command instead of asking first.
    redis.call('PEXPIREAT', key, (bucket + 1) * width + ttl)
  end
end
