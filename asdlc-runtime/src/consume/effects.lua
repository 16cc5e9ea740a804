-- Staged effects, checked by the commit step before it applies any (commit.lua; prepended to
-- every function of the library).

-- What an effect may run: the type its key must hold (false: any), and how many arguments
-- follow the key (nil: any), as the client's constructors (effects.rs) build them.
local ASDLC_STAGED = {
  SET = { 'string', 1 }, INCRBY = { 'string', 1 }, HSET = { 'hash', 2 },
  HINCRBY = { 'hash', 2 }, SADD = { 'set', 1 }, RPUSH = { 'list', 1 }, DEL = { false, 0 },
  EXPIRE = { false, 1 }, XADD = { 'stream', nil }, SCHEDULE = { 'zset', 4 },
}

-- Integers as Redis reads them (string2ll): '0', or an optional '-' and 1 to 19 digits not
-- starting with 0, within 64 bits. Lua numbers are doubles, exact only below 2^53, so an
-- integer is held as its sign and two exact halves of its magnitude, hi * 1e9 + lo.
local ASDLC_BILLION = 1000000000
local ASDLC_I64_HI, ASDLC_I64_LO = 9223372036, 854775807

local function asdlc_in_i64(sign, hi, lo)
  return hi < ASDLC_I64_HI or (hi == ASDLC_I64_HI and lo <= (sign < 0 and ASDLC_I64_LO + 1 or ASDLC_I64_LO))
end

-- The sign and halves of `text`, or nil if Redis would not read it as an integer.
local function asdlc_int_of(text)
  if text == '0' then
    return 1, 0, 0
  end
  local sign, digits = 1, text
  if string.byte(text, 1) == 45 then
    sign, digits = -1, string.sub(text, 2)
  end
  if #digits > 19 or not string.find(digits, '^[1-9][0-9]*$') then
    return nil
  end
  local hi, lo = 0, tonumber(digits)
  if #digits > 9 then
    hi, lo = tonumber(string.sub(digits, 1, -10)), tonumber(string.sub(digits, -9))
  end
  if not asdlc_in_i64(sign, hi, lo) then
    return nil
  end
  return sign, hi, lo
end

-- `a + b` (both read by asdlc_int_of) as Redis writes it, or nil if it leaves 64 bits (Redis
-- refuses: "increment or decrement would overflow").
local function asdlc_int_add(a, b)
  local s1, h1, l1 = asdlc_int_of(a)
  local s2, h2, l2 = asdlc_int_of(b)
  local hi, lo
  if s1 == s2 then
    hi, lo = h1 + h2, l1 + l2
    if lo >= ASDLC_BILLION then hi, lo = hi + 1, lo - ASDLC_BILLION end
  else
    if h1 < h2 or (h1 == h2 and l1 < l2) then
      s1, h1, l1, h2, l2 = s2, h2, l2, h1, l1
    end
    hi, lo = h1 - h2, l1 - l2
    if lo < 0 then hi, lo = hi - 1, lo + ASDLC_BILLION end
  end
  if not asdlc_in_i64(s1, hi, lo) then
    return nil
  end
  if hi == 0 and lo == 0 then
    return '0'
  end
  local text = hi > 0 and string.format('%.0f%09d', hi, lo) or string.format('%d', lo)
  return s1 < 0 and '-' .. text or text
end


-- What the effects checked so far leave of `key`, in `view` (one per record): t its type;
-- for a string, v its value (nil: not read yet); for a hash, f the fields known (a value, or
-- false for none) and whole when it has no field beyond those. A key no earlier effect of the
-- record wrote is read from the server.
local function asdlc_view_of(view, key)
  local k = view[key]
  if not k then
    local t = redis.call('TYPE', key)['ok']
    k = { t = t, f = {}, whole = t == 'none' }
    view[key] = k
  end
  return k
end

local function asdlc_view_gone(k)
  k.t, k.v, k.f, k.whole = 'none', nil, {}, true
end

local function asdlc_refusal(cmd, key, why)
  return nil, cmd .. ' on ' .. key .. ': ' .. why
end

-- The value an INCRBY (field nil) or HINCRBY of `key` starts from: '0' if there is none.
local function asdlc_view_number(key, k, field)
  if k.t == 'none' then
    return '0'
  end
  if not field then
    if k.v == nil then k.v = redis.call('GET', key) end
    return k.v
  end
  local v = k.f[field]
  if v == nil then
    v = (not k.whole and redis.call('HGET', key, field)) or false
    k.f[field] = v
  end
  return v or '0'
end

-- Whether `key` is one of the group's processed-mark keys (a mark hash or a bucket's layout,
-- under the marks prefix ARGV[1]), which the commit itself writes.
local function asdlc_is_marks_key(ARGV, key)
  return string.sub(key, 1, #ARGV[1]) == ARGV[1]
end

-- Checks every effect of a record before any is applied, so that a refused effect leaves
-- nothing of its record applied, and so that nothing fails once applying begins: an error
-- in the middle of the call would leave the records before it applied and marked, but
-- neither acknowledged nor released (see the top of commit.lua).
--
-- Each effect is checked against what it will find: a key an earlier effect of the record
-- wrote, as that effect leaves it (asdlc_view_of); any other key as the server holds it, which
-- includes the records of this call applied before this one (each is applied right after
-- its check) and nothing of a refused one. Redis refuses an INCRBY or HINCRBY of a value it
-- does not read as an integer, or whose result leaves 64 bits: both are foreseen exactly.
-- Returns the index after the record's effects, or nil and the refusal.
local function asdlc_check_effects(ARGV, KEYS, declared, own, first, n)
  local view = {}
  local i = first
  for _ = 1, n do
    local cmd, key, nargs = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    local spec = ASDLC_STAGED[cmd]
    if spec == nil then
      return nil, 'command ' .. cmd .. ' cannot be staged'
    end
    local want, arity = spec[1], spec[2]
    if not declared[key] then
      return asdlc_refusal(cmd, key, 'key not declared in KEYS')
    end
    if own[key] or (key == KEYS[1] and cmd ~= 'XADD') or asdlc_is_marks_key(ARGV, key) then
      return asdlc_refusal(cmd, key, 'key is written by the commit itself')
    end
    if arity and nargs ~= arity then
      return asdlc_refusal(cmd, key, nargs .. ' arguments, not ' .. arity)
    end
    local arg = ARGV[i + 3]
    if cmd == 'SCHEDULE' then
      -- Its second key: the hash of the scheduled events.
      if not declared[arg] then
        return asdlc_refusal(cmd, arg, 'key not declared in KEYS')
      end
      if own[arg] or arg == KEYS[1] or asdlc_is_marks_key(ARGV, arg) then
        return asdlc_refusal(cmd, arg, 'key is written by the commit itself')
      end
      local e = asdlc_view_of(view, arg)
      if e.t ~= 'none' and e.t ~= 'hash' then
        return asdlc_refusal(cmd, arg, 'key holds a ' .. e.t)
      end
      if not asdlc_int_of(ARGV[i + 5]) then
        return asdlc_refusal(cmd, key, 'delay is not an integer')
      end
      e.t = 'hash'
    end
    local k = asdlc_view_of(view, key)
    if want and k.t ~= 'none' and k.t ~= want then
      return asdlc_refusal(cmd, key, 'key holds a ' .. k.t)
    end
    if cmd == 'INCRBY' or cmd == 'HINCRBY' then
      local field, by = nil, arg
      if cmd == 'HINCRBY' then field, by = arg, ARGV[i + 4] end
      local current = asdlc_view_number(key, k, field)
      if not asdlc_int_of(current) then
        return asdlc_refusal(cmd, key, field and 'field value is not an integer'
          or 'value is not an integer')
      end
      if not asdlc_int_of(by) then
        return asdlc_refusal(cmd, key, 'increment is not an integer')
      end
      local sum = asdlc_int_add(current, by)
      if not sum then
        return asdlc_refusal(cmd, key, 'increment or decrement would overflow')
      end
      k.t = want
      if field then k.f[field] = sum else k.v = sum end
    elseif cmd == 'SET' then
      k.t, k.v = 'string', arg
    elseif cmd == 'HSET' then
      k.t, k.f[arg] = 'hash', ARGV[i + 4]
    elseif cmd == 'DEL' then
      asdlc_view_gone(k)
    elseif cmd == 'EXPIRE' then
      local sign, hi = asdlc_int_of(arg)
      -- Redis refuses an expiry whose milliseconds leave 64 bits; the client caps expiries
      -- far below this bound (1e12 s).
      if not sign or hi >= 1000 then
        return asdlc_refusal(cmd, key, 'seconds out of range')
      end
      -- An expiry that is not in the future deletes the key at once.
      if sign < 0 or arg == '0' then asdlc_view_gone(k) end
    elseif want then
      k.t = want
    end
    i = i + 3 + nargs
  end
  return i, nil
end
