-- Approval gates: one outcome per gate, decided here, in the step that appends the event
-- announcing it, so the stream never holds two outcomes of one gate.
-- A gate's hash holds: outcome ('pending', 'approved', 'rejected' or 'expired'), requested_at,
-- deadline (ms), requested_by, decided_by, decided_at, decided_entry, and the packed fields
-- of its gate_expired event (expiry).
-- ARGV[1] the operation, ARGV[2] the stream's MAXLEN (~), '' for none; then per operation:
--   request: KEYS gate hash, all gates, pending gates, stream
--            ARGV[3] id, timeout ms (the deadline is the server's now + timeout),
--            requested_by, packed gate_requested, packed gate_expired
--            -> {1, entry id} requested; {0, outcome} requested before (nothing written)
--   decide:  KEYS gate hash, pending gates, stream
--            ARGV[3] id, outcome, decided_by, packed event
--            -> {1, entry id} decided by this call; {0, outcome, decided_by, decided_at} too
--               late: decided before, or past the deadline (then it expires here: the
--               deadline won); {-1} no such gate
--   expire:  KEYS pending gates, stream, then the gate hashes; ARGV[3..] their ids
--            -> the ids expired by this call
--   deliver: a consumer about to hand an outcome event (entry ARGV[6]) to a handler
--            KEYS gate hash, pending gates, stream; ARGV[3] id, outcome, by, entry id
--            -> {1} handle it: it is the gate's outcome (decided now, if the event was
--               published around `Gate`); {2} no such gate; {0, outcome, decided_by} late:
--               the gate had another outcome (or its deadline passed: it expires here)
local op, maxlen = ARGV[1], ARGV[2]
local now = asdlc_now_ms()
-- A decided gate's state is kept this long (30 days), then expires; `list` drops the ids of
-- expired gates from the index as it meets them.
local keep_ms = 30 * 24 * 3600 * 1000

local function append(stream, packed)
  return redis.call(unpack(asdlc_xadd_args(stream, maxlen, asdlc_unpack_fields(packed))))
end

local function decide(gate, pending, stream, id, outcome, by, packed)
  local entry = append(stream, packed)
  redis.call('HSET', gate, 'outcome', outcome, 'decided_by', by, 'decided_at', now,
    'decided_entry', entry)
  redis.call('PEXPIRE', gate, keep_ms)
  redis.call('ZREM', pending, id)
  return entry
end

if op == 'request' then
  local gate, all, pending, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
  local id, deadline = ARGV[3], now + tonumber(ARGV[4])
  if redis.call('EXISTS', gate) == 1 then
    return { 0, redis.call('HGET', gate, 'outcome') }
  end
  local entry = append(stream, ARGV[6])
  redis.call('HSET', gate, 'outcome', 'pending', 'requested_at', now, 'deadline', deadline,
    'requested_by', ARGV[5], 'requested_entry', entry, 'expiry', ARGV[7])
  redis.call('ZADD', all, now, id)
  redis.call('ZADD', pending, deadline, id)
  return { 1, entry }
elseif op == 'decide' then
  local gate, pending, stream = KEYS[1], KEYS[2], KEYS[3]
  local id, outcome, by = ARGV[3], ARGV[4], ARGV[5]
  local state = redis.call('HMGET', gate, 'outcome', 'deadline', 'decided_by', 'decided_at',
    'expiry')
  if not state[1] then
    return { -1 }
  end
  if state[1] == 'pending' and now >= tonumber(state[2]) then
    -- The deadline came first: it wins, here and now.
    decide(gate, pending, stream, id, 'expired', 'deadline', state[5])
    return { 0, 'expired', 'deadline', now }
  end
  if state[1] ~= 'pending' then
    return { 0, state[1], state[3], tonumber(state[4]) }
  end
  return { 1, decide(gate, pending, stream, id, outcome, by, ARGV[6]) }
elseif op == 'expire' then
  local pending, stream = KEYS[1], KEYS[2]
  local out = {}
  for i = 3, #KEYS do
    local gate, id = KEYS[i], ARGV[i]
    local state = redis.call('HMGET', gate, 'outcome', 'deadline', 'expiry')
    if state[1] == 'pending' and now >= tonumber(state[2]) then
      decide(gate, pending, stream, id, 'expired', 'deadline', state[3])
      out[#out + 1] = id
    elseif state[1] ~= 'pending' then
      redis.call('ZREM', pending, id)
    end
  end
  return out
elseif op == 'deliver' then
  local gate, pending, stream = KEYS[1], KEYS[2], KEYS[3]
  local id, outcome, by, entry = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local state = redis.call('HMGET', gate, 'outcome', 'deadline', 'decided_by', 'decided_entry',
    'expiry')
  if not state[1] then
    return { 2 }
  end
  if state[4] == entry then
    return { 1 }
  end
  if state[1] == 'pending' then
    if now >= tonumber(state[2]) then
      decide(gate, pending, stream, id, 'expired', 'deadline', state[5])
      return { 0, 'expired', 'deadline' }
    end
    redis.call('HSET', gate, 'outcome', outcome, 'decided_by', by, 'decided_at', now,
      'decided_entry', entry)
    redis.call('PEXPIRE', gate, keep_ms)
    redis.call('ZREM', pending, id)
    return { 1 }
  end
  return { 0, state[1], state[3] }
end
return redis.error_reply('asdlc gate: unknown operation ' .. tostring(op))
