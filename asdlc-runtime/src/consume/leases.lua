-- In-flight leases, shared by the scripts that take, keep or drop them (prepended to each).
--
-- A lease says "one delivery is working on this idempotency key": while it is live no other
-- delivery of the key begins. All leases of one stream and group are fields of one hash,
-- the key's 12-byte fingerprint -> '<deadline ms>|<attempts>|<token>|<entry id>', so a
-- whole batch takes, checks or drops its leases in one command each. The token names the
-- process (a random value per run, so two processes under one consumer name are told apart);
-- a lease past its deadline is free for the taking.
--
-- `attempts` counts the handler attempts of the key that began: the begin step raises it
-- each time a delivery takes the lease to run its handler. A retry releases the lease
-- (deadline = now) but keeps the field, so the count survives the retry, a crash, a
-- re-queue or a claim by another consumer; it is dropped with the lease when the key is
-- committed or dead-lettered. Counting here, not in the entry's delivery count, keeps
-- re-checks of a busy key and claims before a handler started from counting.

-- The value of the lease hash's `about` field, added by the begin step. A busy consumer has
-- hundreds of leases; in the server's compact listpack encoding (a hash of up to 128 or 512
-- short fields, by default) every field read or write scans them all. One value longer than
-- `hash-max-listpack-value` (64 bytes by default) keeps the hash in the hashtable encoding,
-- where a field is found at once; and the hash stays when its last lease goes, so it is not
-- made again in the compact encoding while leases come and go. When only `about` is left,
-- the hash goes too (asdlc_forget_if_empty), so an idle group keeps no lease hash.
local ASDLC_LEASE_ABOUT =
  'asdlc in-flight leases: <key fingerprint> = <deadline ms>|<attempts>|<token>|<entry id>'

-- Deletes the lease hash `key` if nothing but its `about` field is left in it.
local function asdlc_forget_if_empty(key)
  if redis.call('HLEN', key) == 1 and redis.call('HEXISTS', key, 'about') == 1 then
    redis.call('DEL', key)
  end
end

-- Milliseconds as the text leases hold (an integer, without a float's formatting).
local function asdlc_ms_text(ms)
  return string.format('%d', ms)
end

-- The holder ('<token>|<entry id>') of a lease value, whether the lease is live at `now`
-- (ms, as text from asdlc_ms_text), and its attempt count. Deadlines of equal length compare
-- as text, which spares a number conversion per lease.
local function asdlc_lease_holder(value, now)
  if not value then
    return nil, false, 0
  end
  local a = string.find(value, '|', 1, true)
  if not a then
    return nil, false, 0
  end
  local b = string.find(value, '|', a + 1, true)
  if not b then
    return nil, false, 0
  end
  local deadline = string.sub(value, 1, a - 1)
  local live
  if #deadline == #now then
    live = deadline > now
  else
    live = (tonumber(deadline) or 0) > tonumber(now)
  end
  return string.sub(value, b + 1), live, tonumber(string.sub(value, a + 1, b - 1)) or 0
end

-- Whether `s` has `part` at `at`, preceded by a '|'.
local function asdlc_has_at(s, part, at)
  return at > 1 and string.byte(s, at - 1) == 124 and string.find(s, part, at, true) == at
end

-- Whether lease `value` is held by `token|id`, and if so whether it is live at the ms before
-- `after` (the text of now + 1 ms): what a commit asks of its own leases, answered without
-- taking the value apart or building the holder (a third of a commit's lease work). A
-- deadline of after's length compares as text: the value, which goes on after the
-- deadline, sorts after `after` exactly when the deadline is at least `after`, that is,
-- later than now.
local function asdlc_lease_held_by(value, token, id, after)
  if not value then
    return false, false
  end
  local at = #value - #id + 1
  if not asdlc_has_at(value, id, at) or not asdlc_has_at(value, token, at - 1 - #token) then
    return false, false
  end
  local bar = string.find(value, '|', 1, true)
  if bar - 1 == #after then
    return true, value > after
  end
  return true, (tonumber(string.sub(value, 1, bar - 1)) or 0) >= tonumber(after)
end

-- A lease value.
local function asdlc_lease_value(deadline_text, attempts, holder)
  return deadline_text .. '|' .. string.format('%d', attempts) .. '|' .. holder
end

-- How long the lease hash outlives its last write: long enough that a retry's attempt count
-- survives a consumer that is down for a while (a lost count only resets it); fields left
-- behind are swept by sweep_leases.lua.
local ASDLC_LEASE_HASH_MS = 86400000

-- Keeps the lease hash from expiring for at least a day or `lease_ms` (never shortens it).
local function asdlc_keep_leases(key, lease_ms)
  local keep = math.max(lease_ms, ASDLC_LEASE_HASH_MS)
  if redis.call('PTTL', key) < keep / 2 then
    redis.call('PEXPIRE', key, keep)
  end
end
