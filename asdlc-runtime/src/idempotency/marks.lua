-- Processed marks, shared by every function that reads or writes them.
--
-- A mark is one field of a small hash: the field is the 12-byte fingerprint of the
-- idempotency key, the value 1 (and each hash has one more field, '#'). Hashes are named
-- <prefix><bucket>:<shard>, where the bucket is the time slice (width ms) the mark was
-- written in and the shard comes from the fingerprint: its first two bytes modulo the
-- layout's shard count, named by 4 hex digits, up to 65,536 shards; its first three bytes
-- (the third above the first two) modulo the count, by 5 digits, above (at most 2^20). Each
-- hash expires `ttl` after its bucket ends, so a mark lives between ttl and ttl + width; a
-- lookup checks at most the ceil(ttl / width) + 1 newest buckets. Small hashes stay in
-- Redis's compact listpack encoding (up to hash-max-listpack-entries fields, 128 by
-- default): about 18 bytes a mark, twice that in a hash that outgrew it, 100 or more for a
-- key per mark. So the shard count follows the marks a bucket gets (MarkLayout::for_rate).
--
-- Every function takes the layout as ARGV[1..5]: prefix, width, bucket, ttl, layouts, where
-- `bucket` is the current bucket as the caller computed it from its estimate of this
-- server's clock, and `layouts` the layout the caller assumes for each bucket it reads,
-- newest first, as `<shards>:<digits>`, comma-separated ('' for a call that reads none). The
-- buckets used are the server's: a call whose `bucket` is not the server's fails before it
-- writes anything, with `ASDLC_CLOCK <server ms>`, and the client calls again with the
-- server's bucket (MarkSet, Call::invoke_async). Key names are built from strings made once
-- per call (numbers turned into text cost a float formatting each in the server's Lua), so
-- a lookup is one concatenation and one command.
--
-- Every process of a group must shard a bucket alike, or a lookup reads another hash than
-- the mark was written to and a duplicate gets through. So a bucket's layout is kept next to
-- its hashes, in <prefix><bucket>:layout: written with the bucket's first mark (SET NX,
-- expiring with the bucket's hashes) and checked by every call, one GET for each bucket it
-- reads (one for a call of fresh keys). A call that assumes another layout for a bucket than
-- the one stored fails before it writes anything, with `ASDLC_LAYOUT <bucket>=<layout> ...`
-- (every such bucket with its stored layout); the client follows the stored layouts and
-- calls again. A bucket without a stored layout has no mark written by this library (its
-- first mark stores it), so a call may assume any; marks of a build from before layouts were
-- stored have none either, and are found only in the layout they were written in (book:
-- Sizing the processed marks).
--
-- Every mark hash and layout key a call may touch is declared in its KEYS. The caller
-- declares, for each bucket it reads, the layout key and each fingerprint's shard, back to
-- the oldest bucket a mark of the key can be in: a key born at a known time (a fresh
-- `evt-<UUIDv7>` key, an entry's own id) cannot have been processed before it was made, so
-- most lookups read one hash. A lookup reads the buckets newest first and stops at the first
-- one not declared. The current bucket's hashes follow its layout key one per fingerprint
-- (the call's items, numbered from 1 in the order the caller gave them), so a lookup or a
-- mark takes item n's hash from its place: building the name costs more than the HEXISTS
-- (the caller computes the same shards, MarkSet in lookup.rs). Older buckets' hashes are
-- named here, as they are needed.

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

-- The marks of this call, at time `now` (ms). Refuses the call (before anything is written)
-- if it was made for another bucket, or assumes another layout for a bucket than its stored
-- one.
local function asdlc_marks(now, keys, argv)
  local prefix, width = argv[1], tonumber(argv[2])
  local ttl = tonumber(argv[4])
  local bucket = math.floor(now / width)
  if tonumber(argv[3]) ~= bucket then
    error(redis.error_reply('ASDLC_CLOCK ' .. string.format('%d', now)))
  end
  local nbuckets = math.ceil(ttl / width) + 1
  local m = { buckets = {}, layouts = {}, shards = {}, digits = {}, declared = asdlc_declared(keys) }
  local names = {}
  for layout in string.gmatch(argv[5], '[^,]+') do
    local b = #m.layouts + 1
    if b > nbuckets then
      break
    end
    local shards, digits = string.match(layout, '^(%d+):([45])$')
    local n = tonumber(shards)
    -- 1 to 2^20 shards, named by 4 hex digits up to 65,536 and by 5 above.
    if not n or n < 1 or n > 1048576 or (n > 65536) ~= (digits == '5') then
      error(redis.error_reply('ERR asdlc: mark layout ' .. layout .. ' is not <shards>:<4 or 5>'))
    end
    m.layouts[b], m.shards[b], m.digits[b] = layout, tonumber(shards), tonumber(digits)
    m.buckets[b] = prefix .. string.format('%d', bucket - b + 1) .. ':'
    names[b] = m.buckets[b] .. 'layout'
    asdlc_check_declared(m.declared, names[b], 'mark layout')
  end
  if #names > 0 then
    -- One GET a bucket read (one for a call of fresh keys): GET, not MGET, is what every
    -- tenant user is granted.
    local stored, wrong = {}, {}
    for b = 1, #names do
      stored[b] = redis.call('GET', names[b])
      if stored[b] and stored[b] ~= m.layouts[b] then
        wrong[#wrong + 1] = string.format('%d', bucket - b + 1) .. '=' .. stored[b]
      end
    end
    if #wrong > 0 then
      error(redis.error_reply('ASDLC_LAYOUT ' .. table.concat(wrong, ' ')))
    end
    -- Written with the bucket's first mark (asdlc_set_mark).
    m.unset = not stored[1]
    m.layout_key = names[1]
    -- Item n's hash in the current bucket is keys[m.first + n].
    m.keys, m.first = keys, m.declared[names[1]]
    m.hash_len = #m.buckets[1] + m.digits[1]
  end
  m.expire_at = string.format('%d', (bucket + 1) * width + ttl)
  return m
end

-- The shard of `fp` in the `b`th bucket of the call (1: the current one), as text.
local function asdlc_shard(m, b, fp)
  local shards = m.shards[b]
  if not shards then
    error(redis.error_reply('ERR asdlc: the call gives no mark layout for the bucket it marks'))
  end
  local s = string.byte(fp, 1) * 256 + string.byte(fp, 2)
  if shards > 65536 then
    s = s + string.byte(fp, 3) * 65536
  end
  s = s % shards
  if m.digits[b] == 4 then
    return ASDLC_HEX[math.floor(s / 256)] .. ASDLC_HEX[s % 256]
  end
  return string.sub(ASDLC_HEX[math.floor(s / 65536)], 2)
    .. ASDLC_HEX[math.floor(s / 256) % 256] .. ASDLC_HEX[s % 256]
end

-- The current bucket's hash of item `n` (declared at its place, see above). Only its length
-- is checked against the bucket's hash names (which a layout key's is not; another bucket's
-- hash or another key may have it): comparing the name would cost a tenth of the lookup,
-- and the caller's order is pinned by tests (tests/ordering.rs, tests/it/marks.rs).
local function asdlc_item_hash(m, n)
  local key = m.first and m.keys[m.first + n]
  if not key or #key ~= m.hash_len then
    error(redis.error_reply('ERR asdlc: the call declares no mark hash for its item ' .. n))
  end
  return key
end

-- Whether `fp`, the call's item `n`, is marked.
local function asdlc_is_marked(m, fp, n)
  if redis.call('HEXISTS', asdlc_item_hash(m, n), fp) == 1 then
    return true
  end
  local shard
  for b = 2, #m.buckets do
    if not shard or m.layouts[b] ~= m.layouts[b - 1] then
      shard = asdlc_shard(m, b, fp)
    end
    local key = m.buckets[b] .. shard
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

-- Marks `fp`, the call's item `n`.
local function asdlc_set_mark(m, fp, n)
  local key = asdlc_item_hash(m, n)
  if m.unset then
    -- The bucket's first mark: from now on every call must assume this layout for it.
    redis.call('SET', m.layout_key, m.layouts[1], 'NX', 'PXAT', m.expire_at)
    m.unset = false
  end
  -- '#' is in every mark hash from its first mark on, so two new fields mean a new hash:
  -- only then is its expiry set, without a second command for every mark.
  if redis.call('HSET', key, fp, '1', '#', '') == 2 then
    redis.call('PEXPIREAT', key, m.expire_at)
  end
end
