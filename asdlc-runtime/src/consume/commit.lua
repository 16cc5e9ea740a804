-- Commit step, one call per batch of finished entries. Each record is applied atomically
-- with its acknowledgement (the whole call is one function, so nothing runs in between).
-- KEYS[1] stream, KEYS[2] dead-letter stream, KEYS[3] lease hash, then the mark hashes of
-- the S and s records and the keys of their staged effects
-- ARGV: marks prefix, width, bucket, ttl, layouts (marks.lua), group, token, the dead-letter
-- stream's retention (most entries, '' for no limit; oldest age in ms, 0 for none), recheck
-- ('1' if the client's last call for these records failed, else '0'), then records, where
-- `lease` is the key's fingerprint if the delivery took a lease, else empty:
--   S id fp lease n  (cmd key nargs arg...)*n   success: mark, apply effects, ack, drop lease
--   s id fp                                     the same without effects, lease = fp
--   R id lease                                  retry: release the lease (keeping the key's
--                                               attempt count), leave the entry pending
--   D id lease n  (field value)*n               dead letter: XADD (trimming the dead-letter
--                                               stream to its retention), ack, drop lease
--   A id                                        acknowledge only
--   O id order key                              (no reply of its own) if this call
--                                               acknowledges `id`, it leaves the queue of
--                                               order key `key` in the order hash `order`
--                                               (order.lua), which releases the key's next
--                                               entry
-- An effect `XADD` is a follow-up event the handler emitted: appended in the same step; an
-- effect `SCHEDULE` (set, hash, id, delay ms, packed fields) one emitted for later: scheduled,
-- due that long after now.
-- Returns one value per record but O: 1 done, or (an S record with follow-ups) {1, the id of each
-- follow-up, in order}; 0 (S and s) already processed: acknowledged, effects and follow-ups
-- dropped; 2 (S and s) another delivery of the key holds its lease (ours lapsed): nothing
-- applied, the entry stays pending and is checked again later; or an error text (S only)
-- when an effect was refused: nothing of it applied, the lease kept (the client follows
-- with an R or D record).
--
-- A delivery that still holds its key's lease needs no second look at the marks: its begin
-- step found the key unmarked, and while the lease is live no other delivery can begin, so
-- no other commit can mark the key (a commit whose lease went to another delivery is
-- refused, code 2). Without a live lease (it lapsed) the marks are checked again.
--
-- A call must not fail once it has written: Redis does not roll a function back, so an
-- error leaves the records before it applied and marked, and runs neither the XACK nor the
-- lease drops at the end. Hence every key the call builds is checked against KEYS before the
-- first write (but the mark hashes, which the client declares for the bucket and layout the
-- top of the call checks, marks.lua), and every staged effect is checked before its record
-- applies anything, against what it will find then (effects.lua): a refused effect refuses
-- its own record, as a reply, and the others of the call go on.
--
-- If a call fails all the same (a server error such as a command the user's ACL denies, or
-- a reply lost with the connection), the client (commit.rs) sends the same records again,
-- with recheck = '1', pausing between tries (retry::COMMIT). Under recheck every S and s
-- record looks at the marks even while it holds its lease, so a record the failed call
-- applied is answered 0 and applied no second time; the records after it are applied
-- then. After 100 failures in a row the client gives the entries up: they stay pending with
-- their leases, and the begin step, which looks at the marks of every entry it reads,
-- acknowledges those a failed call marked when the consumer reads its own entries again.
-- D and R records have no mark: a D record of a call that failed after its XADD adds its
-- dead letter again when the call is tried again. Not covered: a call the client counted as
-- failed (its reply lost) that the server runs only after the retry did, on a connection
-- replaced meanwhile; it sees its leases as the retry left them.
local group, token = ARGV[6], ARGV[7]
local dlq_max_len, dlq_max_age = ARGV[8], tonumber(ARGV[9])
local recheck = ARGV[10] == '1'
local dead = 0
local now = asdlc_now_ms()
local marks = asdlc_marks(now, KEYS, ARGV)
local now_text, next_text = asdlc_ms_text(now), asdlc_ms_text(now + 1)
-- Keys of the commit itself, which no effect may write (an effect may only append to the
-- stream): a changed type would fail the call at its end (the acknowledgement, the leases).
local own = { [KEYS[2]] = true, [KEYS[3]] = true }

local function skip_effects(first, n)
  local j = first
  for _ = 1, n do j = j + 3 + tonumber(ARGV[j + 2]) end
  return j
end

-- First pass: the leases of every record, read with one command.
local fields, field_of = {}, {}
local i, r = 11, 0
while i <= #ARGV do
  local kind = ARGV[i]
  r = r + 1
  local lease = ''
  if kind == 's' then
    lease = ARGV[i + 2]
    i = i + 3
  elseif kind == 'S' then
    lease = ARGV[i + 3]
    i = skip_effects(i + 5, tonumber(ARGV[i + 4]))
  elseif kind == 'R' then
    lease = ARGV[i + 2]
    i = i + 3
  elseif kind == 'D' then
    lease = ARGV[i + 2]
    i = i + 4 + 2 * tonumber(ARGV[i + 3])
  elseif kind == 'A' then
    i = i + 2
  elseif kind == 'O' then
    -- Checked before anything is written, like every key the call builds.
    asdlc_check_declared(marks.declared, ARGV[i + 2], 'order hash')
    own[ARGV[i + 2]] = true
    r = r - 1
    i = i + 4
  else
    return redis.error_reply('asdlc commit: unknown record kind ' .. tostring(kind))
  end
  if lease ~= '' then
    fields[#fields + 1] = lease
    field_of[r] = #fields
  end
end
local held = {}
if #fields > 0 then
  held = redis.call('HMGET', KEYS[3], unpack(fields))
end

-- Leases to drop at the end (ours, live or lapsed), and leases to release (fingerprint,
-- value) for a retry.
local drop, release = {}, {}
-- 'mine' (live), 'free' (none, or lapsed) or 'other' (another delivery holds it). `how`
-- says what to do with the lease if it is ours: 'drop' or 'release'.
local function lease_state(r, id, how)
  local j = field_of[r]
  if not j then
    return 'free'
  end
  if how ~= 'release' then
    -- The common case, a lease of ours to drop, told without taking the value apart.
    local ours, live = asdlc_lease_held_by(held[j], token, id, next_text)
    if ours then
      drop[#drop + 1] = fields[j]
      return live and 'mine' or 'free'
    end
  end
  local mine = token .. '|' .. id
  local holder, live, attempts = asdlc_lease_holder(held[j], now_text)
  if holder == mine then
    if how == 'release' then
      release[#release + 1] = fields[j]
      release[#release + 1] = asdlc_lease_value(now_text, attempts, mine)
    else
      drop[#drop + 1] = fields[j]
    end
    return live and 'mine' or 'free'
  elseif live then
    return 'other'
  end
  return 'free'
end

local out = {}
-- The S and s records are the call's mark items (marks.lua), numbered in their order.
local item = 0
-- Acknowledged together at the end: one XACK for the whole call.
local acks = {}
-- The O records (their index in ARGV), settled once the acknowledgements are known.
local orders = {}
i, r = 11, 0
while i <= #ARGV do
  local kind = ARGV[i]
  r = r + 1
  if kind == 's' then
    local id, fp = ARGV[i + 1], ARGV[i + 2]
    item = item + 1
    local lease = lease_state(r, id)
    if lease == 'other' then
      out[#out + 1] = 2
    else
      if (recheck or lease ~= 'mine') and asdlc_is_marked(marks, fp, item) then
        out[#out + 1] = 0
      else
        asdlc_set_mark(marks, fp, item)
        out[#out + 1] = 1
      end
      acks[#acks + 1] = id
    end
    i = i + 3
  elseif kind == 'S' then
    local id, fp, n = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 4])
    local first = i + 5
    local drops = #drop
    item = item + 1
    local lease = lease_state(r, id)
    local marked = lease ~= 'other' and (recheck or lease ~= 'mine')
      and asdlc_is_marked(marks, fp, item)
    local after, err = nil, nil
    if lease ~= 'other' and not marked then
      after, err = asdlc_check_effects(ARGV, KEYS, marks.declared, own, first, n)
    end
    if lease == 'other' or err then
      -- Nothing applied; the entry stays pending (and keeps its lease, if it has one).
      for d = #drop, drops + 1, -1 do drop[d] = nil end
      i = skip_effects(first, n)
      out[#out + 1] = err or 2
    elseif marked then
      -- Processed already (by another delivery, or by a call of ours that failed after
      -- applying it): its effects are not applied again, nor checked against what they did.
      i = skip_effects(first, n)
      out[#out + 1] = 0
      acks[#acks + 1] = id
    else
      i = after
      local j = first
      local emitted = {}
      for _ = 1, n do
        local nargs = tonumber(ARGV[j + 2])
        local args = { ARGV[j], ARGV[j + 1] }
        for a = 1, nargs do args[#args + 1] = ARGV[j + 2 + a] end
        local reply
        if args[1] == 'SCHEDULE' then
          -- A follow-up for later: args are the set, the hash, id, delay (ms), fields.
          reply = asdlc_schedule(args[2], args[3], args[4], now + tonumber(args[5]), args[6])
        else
          reply = redis.call(unpack(args))
        end
        if args[1] == 'XADD' then emitted[#emitted + 1] = reply end
        j = j + 3 + nargs
      end
      asdlc_set_mark(marks, fp, item)
      if #emitted > 0 then
        out[#out + 1] = { 1, unpack(emitted) }
      else
        out[#out + 1] = 1
      end
      acks[#acks + 1] = id
    end
  elseif kind == 'R' then
    lease_state(r, ARGV[i + 1], 'release')
    out[#out + 1] = 1
    i = i + 3
  elseif kind == 'D' then
    local id, n = ARGV[i + 1], tonumber(ARGV[i + 3])
    local args = { 'XADD', KEYS[2], '*' }
    for a = 1, 2 * n do args[#args + 1] = ARGV[i + 3 + a] end
    redis.call(unpack(args))
    dead = dead + 1
    acks[#acks + 1] = id
    lease_state(r, id)
    out[#out + 1] = 1
    i = i + 4 + 2 * n
  elseif kind == 'O' then
    r = r - 1
    orders[#orders + 1] = i
    i = i + 4
  else
    acks[#acks + 1] = ARGV[i + 1]
    out[#out + 1] = 1
    i = i + 2
  end
end
if dead > 0 then
  -- Exact trims: once the stream is within its retention, each removes about as many
  -- entries as this call added.
  if dlq_max_len ~= '' then
    redis.call('XTRIM', KEYS[2], 'MAXLEN', dlq_max_len)
  end
  if dlq_max_age > 0 then
    redis.call('XTRIM', KEYS[2], 'MINID', string.format('%.0f', math.max(now - dlq_max_age, 0)))
  end
end
if #acks > 0 then
  redis.call('XACK', KEYS[1], group, unpack(acks))
end
if #orders > 0 then
  local acked = {}
  for _, id in ipairs(acks) do acked[id] = true end
  -- The releases, by order hash (one, from a consumer): each hash's queues are read and
  -- written once.
  local releases, hashes, rel, rel_order = {}, {}, nil, nil
  for _, at in ipairs(orders) do
    local id, order, key = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
    if acked[id] then
      if order ~= rel_order then
        rel, rel_order = releases[order], order
        if not rel then
          -- (declared: checked before the first write)
          rel = { ids = {}, keys = {} }
          releases[order] = rel
          hashes[#hashes + 1] = order
        end
      end
      rel.ids[#rel.ids + 1] = id
      rel.keys[#rel.keys + 1] = key
    end
  end
  for _, order in ipairs(hashes) do
    local rel = releases[order]
    local view = asdlc_order_open(order, rel.keys)
    for j, id in ipairs(rel.ids) do
      asdlc_order_drop(view, rel.keys[j], id)
    end
    asdlc_order_close(view, nil)
  end
end
if #drop > 0 then
  redis.call('HDEL', KEYS[3], unpack(drop))
end
if #release > 0 then
  redis.call('HSET', KEYS[3], unpack(release))
elseif #drop > 0 then
  asdlc_forget_if_empty(KEYS[3])
end
return out
