-- Begin step of a group with ordered handlers, one call per batch: places each entry in the
-- queue of its order key (order.lua), then runs the begin step (begin.lua) for the entries
-- whose turn it is.
-- KEYS: as begin.lua (stream, lease hash, mark hashes), then the order hash, last
-- ARGV: as begin.lua's first nine, then the order hash; the group's order rule, one
--       `<event type>=<s|t|f>;` per ordered event type (by session, by task, by a key
--       function); then (entry id, fingerprint, order key) for each entry, in stream order,
--       the order key '' for an entry that is not ordered (it is placed, so the cursor passes
--       it, but it never waits).
-- Returns one code per entry: begin.lua's, or -2: an earlier entry of its key is unfinished
-- (held back until that one is committed or dead-lettered); -3: an earlier pending entry of
-- the group could not be placed (ordered by a key function, read by a consumer whose begin
-- step has not run yet), so neither can this one: it is checked again shortly.
--
-- Why entries are placed in stream order, and by whoever comes first: consumers read their
-- batches in stream order, but their begin steps run in any order. An entry may run only
-- when no earlier entry of its key is unfinished, including one another consumer has read
-- and not begun. So every pending entry up to the cursor is in its queue, and an entry past
-- the cursor is placed only after the pending entries before it: those of other consumers
-- are placed here, their key read from their fields by the rule (a key function's key is
-- known to its consumer only). A queue then lists its key's unfinished entries in stream
-- order, and an entry runs at the head of its queue only. A head no longer pending
-- (acknowledged by hand, deleted and claimed) is stale and dropped when found.
local stream, group = KEYS[1], ARGV[6]
-- The order hash is the last key (begin.lua makes the set of all of them, for the marks).
asdlc_check_declared({ [KEYS[#KEYS]] = true }, ARGV[10], 'order hash')
local n = (#ARGV - 11) / 3

-- Entry k's id, fingerprint and order key are ARGV[9 + 3k], ARGV[10 + 3k], ARGV[11 + 3k].
local function entry(k)
  return ARGV[9 + 3 * k], ARGV[11 + 3 * k]
end

-- The queues of this call's keys are read up front, with the cursor and the counts.
local keys = {}
for k = 1, n do
  local key = ARGV[11 + 3 * k]
  if key ~= '' then
    keys[#keys + 1] = key
  end
end
local o = asdlc_order_open(ARGV[10], keys)
local cursor = o.cursor
local moved = false

-- The group's order rule, read when another consumer's entry is placed.
local rule
local function kind_of(event_type)
  if not rule then
    rule = {}
    for t, kind in string.gmatch(ARGV[11], '([^=;]+)=([stf]);') do
      rule[t] = kind
    end
  end
  return rule[event_type]
end

-- Places another consumer's pending entry `id` by its fields; false if its key cannot be
-- known here.
local function place_other(id)
  local found = redis.call('XRANGE', stream, id, id)
  if #found == 0 then
    return true
  end
  local f = {}
  local fields = found[1][2]
  for i = 1, #fields, 2 do
    f[fields[i]] = fields[i + 1]
  end
  local kind = kind_of(f.event_type or '')
  if kind == 'f' then
    return false
  elseif kind == 's' and f.session_id then
    asdlc_order_push(o, 'session:' .. f.session_id, id)
  elseif kind == 't' and f.task_id then
    asdlc_order_push(o, 'task:' .. f.task_id, id)
  end
  return true
end

-- The pending entries after the cursor, up to this call's last entry, a page at a time (a
-- page shorter than asked for is the last).
local ahead, p, more = {}, 1, true
local last = n > 0 and entry(n) or nil
local function next_pending()
  if p > #ahead then
    if not more or not last or not asdlc_id_less(cursor, last) then
      return nil
    end
    local count = math.max(n + 1, 64)
    ahead = redis.call('XPENDING', stream, group, '(' .. cursor, last, count)
    p = 1
    more = #ahead == count
  end
  return ahead[p] and ahead[p][1]
end

-- Whether it is `id`'s turn in the queue of `key`: nothing earlier of its key unfinished.
local function turn(key, id)
  while true do
    local head = asdlc_order_head(o, key)
    if not head or head == id then
      return true
    end
    if #redis.call('XPENDING', stream, group, head, head, 1) > 0 then
      return asdlc_id_less(id, head)
    end
    asdlc_order_drop(o, key, head)
  end
end

-- At most this many entries of other consumers are placed per call, to keep it short.
local others = 1000
local out, go = {}, {}
local blocked = false
-- Entries up to the cursor were placed before (a held entry checked again, a claimed one).
-- The entries are in stream order and the cursor only moves to an entry placed, so once
-- one is past the cursor, every later one is: ids are compared as numbers only up to there
-- and where the pending entries are not this call's own.
local past = false
for k = 1, n do
  local id, key = ARGV[9 + 3 * k], ARGV[11 + 3 * k]
  -- placed: in its queue (now or before); ready: placed now into an empty queue, its turn.
  local placed, ready = true, false
  if not past then
    past = asdlc_id_less(cursor, id)
  end
  if past then
    -- Every pending entry before it, up to the cursor, first.
    while not blocked do
      local first = next_pending()
      if first == id then
        p = p + 1
        break
      end
      if first == nil or asdlc_id_less(id, first) then
        break
      end
      if others == 0 or not place_other(first) then
        blocked = true
      else
        others = others - 1
        cursor, moved = first, true
        p = p + 1
      end
    end
    if blocked then
      placed = false
    else
      if key ~= '' then
        ready = asdlc_order_push(o, key, id)
      end
      cursor, moved = id, true
    end
  end
  if key == '' or ready then
    go[#go + 1] = k
  elseif not placed then
    out[k] = -3
  elseif turn(key, id) then
    go[#go + 1] = k
  else
    out[k] = -2
  end
end

if #go > 0 then
  local argv = {}
  for a = 1, 9 do argv[a] = ARGV[a] end
  for _, k in ipairs(go) do
    argv[#argv + 1] = ARGV[9 + 3 * k]
    argv[#argv + 1] = ARGV[10 + 3 * k]
  end
  local codes = asdlc_step_begin(KEYS, argv, go)
  for j, k in ipairs(go) do
    out[k] = codes[j]
    local id, key = entry(k)
    if codes[j] == 0 and key ~= '' then
      -- A duplicate, acknowledged: it leaves its key's queue.
      asdlc_order_drop(o, key, id)
    end
  end
end
asdlc_order_close(o, moved and cursor or nil)
return out
