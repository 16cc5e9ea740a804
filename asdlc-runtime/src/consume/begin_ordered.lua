-- Begin step of a group with ordered handlers, one call per batch: places each entry in the
-- order of its key, then runs the begin step (begin.lua) for the entries whose turn it is.
-- KEYS: as begin.lua (stream, lease hash, mark hashes), then the order hash and the order
--       lists of the entries (order.lua)
-- ARGV: as begin.lua's first nine, then the order hash, then (entry id, fingerprint, order
--       list) for each entry, in stream order; the order list is '' for an entry of an
--       unordered handler (it is placed, so the cursor passes it, but never waits).
-- Returns one code per entry: begin.lua's, or -2: an earlier entry of its key is unfinished
-- (held back until that one is committed or dead-lettered); -3: an earlier pending entry of
-- the group is not placed yet, so this one cannot be placed either (checked again shortly).
--
-- Why an entry may wait for one it has never seen: consumers read their batches in stream
-- order, but their begin steps run in any order. So entries are placed strictly in stream
-- order: an entry is placed only when no pending entry between the cursor and it is
-- unplaced. A key's list then holds its unfinished entries in stream order, and an entry
-- runs only at the head of its list. A head that is no longer pending (acknowledged by hand,
-- deleted and claimed) is stale and dropped when found.
local stream, group = KEYS[1], ARGV[6]
local order = ARGV[10]
local declared = asdlc_declared(KEYS)
asdlc_check_declared(declared, order, 'order hash')
local n = (#ARGV - 10) / 3
local cursor = redis.call('HGET', order, 'cursor') or '0-0'
local moved = false
local delta = asdlc_order_delta()

-- The pending entries after the cursor, up to our last: enough to find the first one that
-- is not ours.
local ahead = {}
if n > 0 then
  local last = ARGV[11 + 3 * (n - 1)]
  if asdlc_id_less(cursor, last) then
    ahead = redis.call('XPENDING', stream, group, '(' .. cursor, last, n + 1)
  end
end

-- Whether it is `id`'s turn in `list`: nothing earlier of its key is unfinished.
local function turn(list, id)
  while true do
    local head = redis.call('LINDEX', list, 0)
    if not head or head == id then
      return true
    end
    if #redis.call('XPENDING', stream, group, head, head, 1) > 0 then
      return asdlc_id_less(id, head)
    end
    redis.call('LPOP', list)
    delta.queued = delta.queued - 1
    if redis.call('EXISTS', list) == 0 then
      delta.keys = delta.keys - 1
    end
  end
end

local out, go = {}, {}
local p, blocked = 1, false
for k = 1, n do
  local base = 11 + 3 * (k - 1)
  local id, list = ARGV[base], ARGV[base + 2]
  if list ~= '' then
    asdlc_check_declared(declared, list, 'order list')
  end
  local placed = true
  if asdlc_id_less(cursor, id) then
    if blocked then
      placed = false
    else
      local first = ahead[p] and ahead[p][1]
      if first ~= nil and first ~= id and asdlc_id_less(first, id) then
        -- Another delivery's entry, earlier and not placed: everything after it waits.
        blocked, placed = true, false
      else
        if first == id then
          p = p + 1
        end
        if list ~= '' then
          if redis.call('RPUSH', list, id) == 1 then
            delta.keys = delta.keys + 1
          end
          delta.queued = delta.queued + 1
          redis.call('PEXPIRE', list, ASDLC_ORDER_MS)
        end
        cursor, moved = id, true
      end
    end
  end
  if list == '' then
    out[k] = nil
    go[#go + 1] = k
  elseif not placed then
    out[k] = -3
  elseif turn(list, id) then
    go[#go + 1] = k
  else
    out[k] = -2
  end
end

if #go > 0 then
  local argv = {}
  for a = 1, 9 do argv[a] = ARGV[a] end
  for _, k in ipairs(go) do
    local base = 11 + 3 * (k - 1)
    argv[#argv + 1] = ARGV[base]
    argv[#argv + 1] = ARGV[base + 1]
  end
  local codes = asdlc_step_begin(KEYS, argv)
  for j, k in ipairs(go) do
    out[k] = codes[j]
    local list = ARGV[11 + 3 * (k - 1) + 2]
    if codes[j] == 0 and list ~= '' then
      -- A duplicate, acknowledged: it leaves its key's order.
      asdlc_order_drop(list, ARGV[11 + 3 * (k - 1)], delta)
    end
  end
end
if moved then
  redis.call('HSET', order, 'cursor', cursor)
end
asdlc_order_counts(order, delta)
return out
