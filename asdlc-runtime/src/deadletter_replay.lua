-- Replays one dead letter: its original fields go back on the source stream and the dead
-- letter is removed, in one step.
-- KEYS[1] dead-letter stream, KEYS[2] source stream
-- ARGV: dead letter id, original-field prefix
-- Returns the new entry id, or nil if there is no such dead letter.
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return false
end
local fields = found[1][2]
local prefix = ARGV[2]
local args = { 'XADD', KEYS[2], '*' }
for i = 1, #fields, 2 do
  local name = fields[i]
  if string.sub(name, 1, #prefix) == prefix then
    args[#args + 1] = string.sub(name, #prefix + 1)
    args[#args + 1] = fields[i + 1]
  end
end
if #args == 3 then
  return redis.error_reply('asdlc replay: dead letter ' .. ARGV[1] .. ' has no original fields')
end
local id = redis.call(unpack(args))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
