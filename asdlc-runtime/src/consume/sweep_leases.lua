-- Sweeps one page of a lease hash: removes leases whose deadline passed more than
-- `stale ms` ago. Such a field belongs to a delivery whose entry was acknowledged or deleted
-- without passing the commit (by an operator, or a group destroyed and made again), so
-- nothing else would ever remove it while the hash keeps being written.
-- KEYS[1] lease hash
-- ARGV: cursor, page size, stale ms
-- Returns the next cursor ('0' when done) and the number of fields removed.
local reply = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local fields = reply[2]
local before = asdlc_ms_text(asdlc_now_ms() - tonumber(ARGV[3]))
local stale = {}
for i = 1, #fields, 2 do
  local holder, live = asdlc_lease_holder(fields[i + 1], before)
  if fields[i] ~= 'about' and (holder == nil or not live) then
    stale[#stale + 1] = fields[i]
  end
end
if #stale > 0 then
  redis.call('HDEL', KEYS[1], unpack(stale))
  asdlc_forget_if_empty(KEYS[1])
end
return { reply[1], #stale }
