-- Keeps in-flight entries ours: for each entry whose lease this delivery still holds, extend
-- the lease and reset the entry's idle time, so no peer claims work still in progress.
-- KEYS[1] stream, KEYS[2] lease hash
-- ARGV: group, consumer, token, lease ms, then (entry id, fingerprint) pairs (an empty
-- fingerprint: no lease, just reset the idle time).
local group, consumer, token, lease_ms = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = asdlc_now_ms()
local now_text = asdlc_ms_text(now)
local fps, at = {}, {}
for i = 5, #ARGV, 2 do
  if ARGV[i + 1] ~= '' then
    fps[#fps + 1] = ARGV[i + 1]
    at[i] = #fps
  end
end
local held = {}
if #fps > 0 then
  held = redis.call('HMGET', KEYS[2], unpack(fps))
end
local ids, renew = {}, {}
local deadline = asdlc_ms_text(now + lease_ms)
for i = 5, #ARGV, 2 do
  local id, j = ARGV[i], at[i]
  if not j then
    ids[#ids + 1] = id
  else
    -- Ours even if it lapsed, as long as nobody else took it.
    local mine = token .. '|' .. id
    local holder, _, attempts = asdlc_lease_holder(held[j], now_text)
    if holder == mine then
      renew[#renew + 1] = fps[j]
      renew[#renew + 1] = asdlc_lease_value(deadline, attempts, mine)
      ids[#ids + 1] = id
    end
  end
end
if #renew > 0 then
  redis.call('HSET', KEYS[2], unpack(renew))
  asdlc_keep_leases(KEYS[2], lease_ms)
end
if #ids > 0 then
  -- JUSTID: the delivery count stays as it is.
  local claim = { 'XCLAIM', KEYS[1], group, consumer, 0 }
  for _, id in ipairs(ids) do claim[#claim + 1] = id end
  claim[#claim + 1] = 'JUSTID'
  redis.call(unpack(claim))
end
return #ids
