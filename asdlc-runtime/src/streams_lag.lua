-- Counts the entries after a group's last delivered id, inside the server so no entry
-- crosses the network; `(` (exclusive) ranges need Redis 6.2.
-- KEYS[1] stream
-- ARGV: last delivered id, limit
-- Returns the count, or -1 when it is more than `limit` either way.
local limit = tonumber(ARGV[2])
local after = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', limit + 1)
if #after <= limit then return #after end
local upto = redis.call('XRANGE', KEYS[1], '-', ARGV[1], 'COUNT', limit + 1)
if #upto <= limit then return redis.call('XLEN', KEYS[1]) - #upto end
return -1
