-- Appends the scheduled events that are due to their stream, each exactly once: the append,
-- and the removal from the schedule, are one atomic step, so promoters racing on one stream
-- (every consumer of it runs one) never append one twice, and a promoter killed between two
-- calls loses none.
-- KEYS[1] the stream's scheduled set, KEYS[2] its scheduled events, KEYS[3] the stream,
-- KEYS[4] its dead-letter stream (for a stored event that cannot be appended)
-- ARGV[1] at most this many, ARGV[2] the stream's MAXLEN (~), '' for none
-- Returns {appended, ms until the next one is due by the server's clock (-1 if none), id1,
-- entry id1, id2, ...}
local now = asdlc_now_ms()
local due = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]))
local out = { 0, -1 }
for _, id in ipairs(due) do
  local blob = redis.call('HGET', KEYS[2], id)
  if blob then
    local ok, fields = pcall(asdlc_unpack_fields, blob)
    local entry = nil
    if ok and #fields > 0 and #fields % 2 == 0 then
      entry = redis.pcall(unpack(asdlc_xadd_args(KEYS[3], ARGV[2], fields)))
    end
    if type(entry) == 'string' then
      out[#out + 1] = id
      out[#out + 1] = entry
      out[1] = out[1] + 1
    else
      -- Damaged (written around the client) or refused by the stream: to the dead-letter
      -- stream with why, so it neither blocks what is due after it nor is lost.
      local why = type(entry) == 'table' and entry.err or 'the stored fields do not unpack'
      redis.call('XADD', KEYS[4], '*', 'source_stream', KEYS[3], 'source_id', '',
        'group', '', 'consumer', '', 'handler', '', 'reason',
        'scheduled event ' .. id .. ' could not be appended', 'error', why,
        'dead_at', tostring(now), 'attempts', '0', 'f:scheduled', blob)
    end
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[1], id)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if next[2] then
  out[2] = math.max(tonumber(next[2]) - now, 0)
end
return out
