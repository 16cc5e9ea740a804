-- Counts a page of a stream's entries, for a dry-run trim: at most ARGV[3] entries from
-- ARGV[1] (an id, `-`, or `(id` for after it) up to, not including, ARGV[2].
-- KEYS[1] stream
-- Returns { count, last id counted ('' for none) }; a count below the page size means the end.
local chunk = redis.call('XRANGE', KEYS[1], ARGV[1], '(' .. ARGV[2], 'COUNT', tonumber(ARGV[3]))
local last = ''
if #chunk > 0 then last = chunk[#chunk][1] end
return { #chunk, last }
