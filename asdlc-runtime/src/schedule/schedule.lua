-- Schedules an event for later, or cancels one.
-- KEYS[1] the stream's scheduled set, KEYS[2] its scheduled events
-- ARGV[1] 'at', 'after' or 'cancel', ARGV[2] id (the event's idempotency key);
--   at: ARGV[3] due time (ms since the epoch); after: ARGV[3] delay (ms, by the server's
--   clock); then ARGV[4] the packed fields. Returns {1 if scheduled or 0 if the id was
--   scheduled already, the due time in ms}.
-- cancel: returns 1 if cancelled, 0 if the id was not waiting.
if ARGV[1] == 'at' or ARGV[1] == 'after' then
  local due = tonumber(ARGV[3])
  if ARGV[1] == 'after' then
    due = asdlc_now_ms() + due
  end
  local added = asdlc_schedule(KEYS[1], KEYS[2], ARGV[2], due, ARGV[4])
  if added == 0 then
    due = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[2])) or due
  end
  return { added, due }
end
redis.call('ZREM', KEYS[1], ARGV[2])
return redis.call('HDEL', KEYS[2], ARGV[2])
