-- In-flight leases, shared by the scripts that take, keep or drop them (prepended to each).
--
-- A lease says "one delivery is working on this idempotency key": while it is live no other
-- delivery of the key begins. All leases of one stream and group are fields of one hash,
-- the key's 12-byte fingerprint -> '<deadline ms>|<consumer>|<entry id>', so a whole batch
-- takes, checks or drops its leases in one command each. A lease past its deadline is free
-- for the taking. The hash itself expires a lease period after its last write, so leases
-- left by a crashed process go away even if nobody takes them over.

-- Milliseconds as the text leases hold (an integer, without a float's formatting).
local function asdlc_ms_text(ms)
  return string.format('%d', ms)
end

-- The holder ('<consumer>|<entry id>') of a lease value, and whether the lease is live at
-- `now` (ms, as text from asdlc_ms_text). Deadlines of equal length compare as text, which
-- spares a number conversion per lease.
local function asdlc_lease_holder(value, now)
  if not value then
    return nil, false
  end
  local sep = string.find(value, '|', 1, true)
  if not sep then
    return nil, false
  end
  local deadline = string.sub(value, 1, sep - 1)
  local live
  if #deadline == #now then
    live = deadline > now
  else
    live = (tonumber(deadline) or 0) > tonumber(now)
  end
  return string.sub(value, sep + 1), live
end

-- Keeps the lease hash at least `lease_ms` from expiring (never shortens it).
local function asdlc_keep_leases(key, lease_ms)
  if redis.call('PTTL', key) < lease_ms then
    redis.call('PEXPIRE', key, lease_ms)
  end
end
