-- Creates a stream if it does not exist, as an empty stream. XGROUP CREATE ... MKSTREAM is
-- the only way to make an empty stream without adding and deleting an entry; the helper
-- group is removed in the same atomic step.
-- KEYS[1] stream
-- Returns 1 if it was created.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('XGROUP', 'CREATE', KEYS[1], '__asdlc_init', '$', 'MKSTREAM')
redis.call('XGROUP', 'DESTROY', KEYS[1], '__asdlc_init')
return 1
