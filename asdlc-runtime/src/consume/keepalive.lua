-- Keeps in-flight entries ours: for each entry whose lease this delivery still holds, extend
-- the lease and reset the entry's idle time, so no peer claims work still in progress.
-- KEYS[1] stream
-- ARGV: group, lease prefix, consumer, lease ms, then (entry id, fingerprint hex) pairs
-- (an empty fingerprint: no lease, just reset the idle time).
local group, lease_prefix, consumer, lease_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local kept = 0
for i = 5, #ARGV, 2 do
  local id, fphex = ARGV[i], ARGV[i + 1]
  local ours = true
  if fphex ~= '' then
    local lease = lease_prefix .. fphex
    if redis.call('GET', lease) == consumer .. '|' .. id then
      redis.call('PEXPIRE', lease, lease_ms)
    else
      ours = false
    end
  end
  if ours then
    redis.call('XCLAIM', KEYS[1], group, consumer, 0, id, 'JUSTID')
    kept = kept + 1
  end
end
return kept
