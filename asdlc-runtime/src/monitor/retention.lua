-- Removes the entries of a stream that every consumer group has both read and acknowledged,
-- in one atomic step: nothing can be read, claimed or acknowledged between the computation of
-- the safe bound and the trim.
-- KEYS[1] stream
-- ARGV[1] minimum age in ms (0: none), ARGV[2] '1' for a dry run (remove nothing; `removed`
-- is then -1 unless every entry would go: the caller counts the entries below safe_min_id)
-- Returns { outcome, removed, length_before, safe_min_id, limit_kind, limit_group, limit_id }
--   outcome: 'no-stream' | 'no-groups' | 'trimmed'
--   limit_kind: 'pending' (limit_id is the group's oldest pending entry), 'unread'
--   (limit_id is the group's last delivered entry), 'min-age' (limit_id is the cutoff),
--   'none' (every group has read and acknowledged everything)
-- Entries with ids below safe_min_id are (or, in a dry run, would be) removed.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return { 'no-stream', 0, 0, '', '', '', '' }
end
local length = redis.call('XLEN', KEYS[1])
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then
  return { 'no-groups', 0, length, '', '', '', '' }
end

local function field(flat, name)
  for i = 1, #flat, 2 do
    if flat[i] == name then return flat[i + 1] end
  end
  return nil
end

-- Ids are compared as decimal strings: both parts are 64-bit, more than a Lua number holds.
local function parts(id)
  local dash = string.find(id, '-', 1, true)
  if not dash then return id, '0' end
  return string.sub(id, 1, dash - 1), string.sub(id, dash + 1)
end
local function numcmp(a, b)
  if #a ~= #b then return (#a < #b) and -1 or 1 end
  if a == b then return 0 end
  return (a < b) and -1 or 1
end
local function idcmp(a, b)
  local am, as = parts(a)
  local bm, bs = parts(b)
  local c = numcmp(am, bm)
  if c ~= 0 then return c end
  return numcmp(as, bs)
end
local function increment(n)
  local digits = {}
  for i = 1, #n do digits[i] = string.byte(n, i) - 48 end
  local i = #digits
  while i >= 1 do
    if digits[i] < 9 then
      digits[i] = digits[i] + 1
      break
    end
    digits[i] = 0
    i = i - 1
  end
  local out = (i == 0) and '1' or ''
  for j = 1, #digits do out = out .. digits[j] end
  return out
end
local MAX = '18446744073709551615'
-- The smallest id greater than `id`, or nil if there is none.
local function successor(id)
  local ms, seq = parts(id)
  if seq ~= MAX then return ms .. '-' .. increment(seq) end
  if ms ~= MAX then return increment(ms) .. '-0' end
  return nil
end

local bound, kind, group, limit_id = nil, 'none', '', ''
for _, g in ipairs(groups) do
  local name = field(g, 'name')
  local last = field(g, 'last-delivered-id')
  local summary = redis.call('XPENDING', KEYS[1], name)
  local candidate, why, id
  if summary[1] > 0 then
    -- Pending entries were delivered, so the oldest one is at or before `last`.
    candidate, why, id = summary[2], 'pending', summary[2]
  else
    candidate, why, id = successor(last), 'unread', last
  end
  if candidate and (bound == nil or idcmp(candidate, bound) < 0) then
    bound, kind, group, limit_id = candidate, why, name, id
  end
end

local min_age = tonumber(ARGV[1])
if min_age > 0 then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local cutoff = string.format('%.0f', math.max(now_ms - min_age, 0)) .. '-0'
  if bound == nil or idcmp(cutoff, bound) < 0 then
    bound, kind, group, limit_id = cutoff, 'min-age', '', cutoff
  end
end

if bound == nil then
  -- Every group has read up to the largest possible id and acknowledged everything.
  local removed = length
  if ARGV[2] ~= '1' then removed = redis.call('XTRIM', KEYS[1], 'MAXLEN', 0) end
  return { 'trimmed', removed, length, '', kind, group, limit_id }
end

local removed
if ARGV[2] == '1' then
  -- A dry run counts what it would remove in bounded calls of its own (count_range), so
  -- a long stream never holds the server in one call.
  removed = -1
else
  -- Exact MINID (no `~`): exactly the entries below the bound go, and nothing else.
  removed = redis.call('XTRIM', KEYS[1], 'MINID', bound)
end
return { 'trimmed', removed, length, bound, kind, group, limit_id }
