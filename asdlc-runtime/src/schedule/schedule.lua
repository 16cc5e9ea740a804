-- Schedules an event for later, or cancels one.
-- KEYS[1] the stream's scheduled set, KEYS[2] its scheduled events
-- ARGV[1] 'add' or 'cancel', ARGV[2] id (the event's idempotency key);
--   add: ARGV[3] due time (ms since the epoch), ARGV[4] the packed fields
-- Returns 1 if scheduled (or cancelled), 0 if the id was scheduled already (or was not).
asdlc_check_declared(asdlc_declared(KEYS), KEYS[1], 'scheduled set')
if ARGV[1] == 'add' then
  return asdlc_schedule(KEYS[1], KEYS[2], ARGV[2], ARGV[3], ARGV[4])
end
redis.call('ZREM', KEYS[1], ARGV[2])
return redis.call('HDEL', KEYS[2], ARGV[2])
