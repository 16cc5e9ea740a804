-- Processed marks, shared by every function that reads or writes them.
--
-- A mark is one field of a small hash: the field is the 12-byte fingerprint of the
-- idempotency key, the value 1 (and each hash has one more field, '#'). Hashes are named
-- <prefix><bucket>:<shard>, where the bucket is the time slice (width ms) the mark was
-- written in and the shard (4 hex digits) comes from the fingerprint's first two bytes. Each
-- hash expires `ttl` after its bucket ends, so a mark lives between ttl and ttl + width; a
-- lookup checks at most the ceil(ttl / width) + 1 newest buckets. Small hashes stay in
-- Redis's compact listpack encoding: 20 to 40 bytes a mark instead of 100 or more for a key
-- per mark.
--
-- Every function takes the layout as ARGV[1..5]: prefix, width, bucket, ttl, shards, where
-- `bucket` is the current bucket as the caller computed it from its estimate of this
-- server's clock. The buckets used are the server's: a call whose `bucket` is not the
-- server's fails before it writes anything, with `ASDLC_CLOCK <server ms>`, and the client
-- calls again with the server's bucket (MarkLayout, Call::marks). Key names are built from
-- strings made once per call (numbers turned into text cost a float formatting each in the
-- server's Lua), so a lookup is one concatenation and one command.
--
-- Every mark hash a call may touch is declared in its KEYS. The caller declares, for each
-- fingerprint's shard, the current bucket and the older ones back to the oldest a mark of
-- the key can be in: a key born at a known time (a fresh `evt-<UUIDv7>` key, an entry's own
-- id) cannot have been processed before it was made, so most lookups read one hash. A lookup
-- reads the buckets newest first and stops at the first one not declared.

local ASDLC_HEX = {
  [0] = '00', '01', '02', '03', '04', '05', '06', '07', '08', '09', '0a', '0b', '0c', '0d', '0e',
  '0f', '10', '11', '12', '13', '14', '15', '16', '17', '18', '19', '1a', '1b', '1c', '1d',
  '1e', '1f', '20', '21', '22', '23', '24', '25', '26', '27', '28', '29', '2a', '2b', '2c',
  '2d', '2e', '2f', '30', '31', '32', '33', '34', '35', '36', '37', '38', '39', '3a', '3b',
  '3c', '3d', '3e', '3f', '40', '41', '42', '43', '44', '45', '46', '47', '48', '49', '4a',
  '4b', '4c', '4d', '4e', '4f', '50', '51', '52', '53', '54', '55', '56', '57', '58', '59',
  '5a', '5b', '5c', '5d', '5e', '5f', '60', '61', '62', '63', '64', '65', '66', '67', '68',
  '69', '6a', '6b', '6c', '6d', '6e', '6f', '70', '71', '72', '73', '74', '75', '76', '77',
  '78', '79', '7a', '7b', '7c', '7d', '7e', '7f', '80', '81', '82', '83', '84', '85', '86',
  '87', '88', '89', '8a', '8b', '8c', '8d', '8e', '8f', '90', '91', '92', '93', '94', '95',
  '96', '97', '98', '99', '9a', '9b', '9c', '9d', '9e', '9f', 'a0', 'a1', 'a2', 'a3', 'a4',
  'a5', 'a6', 'a7', 'a8', 'a9', 'aa', 'ab', 'ac', 'ad', 'ae', 'af', 'b0', 'b1', 'b2', 'b3',
  'b4', 'b5', 'b6', 'b7', 'b8', 'b9', 'ba', 'bb', 'bc', 'bd', 'be', 'bf', 'c0', 'c1', 'c2',
  'c3', 'c4', 'c5', 'c6', 'c7', 'c8', 'c9', 'ca', 'cb', 'cc', 'cd', 'ce', 'cf', 'd0', 'd1',
  'd2', 'd3', 'd4', 'd5', 'd6', 'd7', 'd8', 'd9', 'da', 'db', 'dc', 'dd', 'de', 'df', 'e0',
  'e1', 'e2', 'e3', 'e4', 'e5', 'e6', 'e7', 'e8', 'e9', 'ea', 'eb', 'ec', 'ed', 'ee', 'ef',
  'f0', 'f1', 'f2', 'f3', 'f4', 'f5', 'f6', 'f7', 'f8', 'f9', 'fa', 'fb', 'fc', 'fd', 'fe',
  'ff'
}

local function asdlc_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The marks of this call, at time `now` (ms).
local function asdlc_marks(now, keys, argv)
  local prefix, width = argv[1], tonumber(argv[2])
  local ttl, shards = tonumber(argv[4]), tonumber(argv[5])
  local bucket = math.floor(now / width)
  if tonumber(argv[3]) ~= bucket then
    error(redis.error_reply('ASDLC_CLOCK ' .. string.format('%d', now)))
  end
  local nbuckets = math.ceil(ttl / width) + 1
  local m = { shards = shards, buckets = {}, declared = asdlc_declared(keys) }
  for b = 0, nbuckets - 1 do
    m.buckets[b + 1] = prefix .. string.format('%d', bucket - b) .. ':'
  end
  m.expire_at = string.format('%d', (bucket + 1) * width + ttl)
  return m
end

local function asdlc_shard(m, fp)
  local s = (string.byte(fp, 1) * 256 + string.byte(fp, 2)) % m.shards
  return ASDLC_HEX[math.floor(s / 256)] .. ASDLC_HEX[s % 256]
end

local function asdlc_is_marked(m, fp)
  local shard = asdlc_shard(m, fp)
  local key = m.buckets[1] .. shard
  asdlc_check_declared(m.declared, key, 'mark hash')
  if redis.call('HEXISTS', key, fp) == 1 then
    return true
  end
  for b = 2, #m.buckets do
    key = m.buckets[b] .. shard
    -- Not declared: no mark of the key can be this old.
    if not m.declared[key] then
      return false
    end
    if redis.call('HEXISTS', key, fp) == 1 then
      return true
    end
  end
  return false
end

local function asdlc_set_mark(m, fp)
  local key = m.buckets[1] .. asdlc_shard(m, fp)
  asdlc_check_declared(m.declared, key, 'mark hash')
  -- '#' is in every mark hash from its first mark on, so two new fields mean a new hash:
  -- only then is its expiry set, without a second command for every mark.
  if redis.call('HSET', key, fp, '1', '#', '') == 2 then
    redis.call('PEXPIREAT', key, m.expire_at)
  end
end
