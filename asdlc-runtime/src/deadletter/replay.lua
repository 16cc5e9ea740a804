-- Replays one dead letter: its original fields go back on the source stream and the dead
-- letter is removed, in one step. The copy keeps the identity the original was deduplicated
-- under, so a group that handled the original skips it: an original without an
-- `idempotency_key` was deduplicated by its entry id, so the copy gets `entry:<source id>`.
-- KEYS[1] dead-letter stream, KEYS[2] source stream
-- ARGV: dead letter id, original-field prefix, the one group to handle the copy ('' for every
--       group; else it must be the group that gave up on the letter, and exist), the field
--       that names that group in the copy
-- Returns the new entry id, or nil if there is no such dead letter.
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return false
end
local fields = found[1][2]
local prefix, only, only_field = ARGV[2], ARGV[3], ARGV[4]
local args = { 'XADD', KEYS[2], '*' }
local keyed, source_id, group = false, nil, nil
for i = 1, #fields, 2 do
  local name = fields[i]
  if string.sub(name, 1, #prefix) == prefix then
    local original = string.sub(name, #prefix + 1)
    -- A copy replayed before to one group is now replayed as asked this time.
    if original ~= only_field then
      if original == 'idempotency_key' then keyed = true end
      args[#args + 1] = original
      args[#args + 1] = fields[i + 1]
    end
  elseif name == 'source_id' then
    source_id = fields[i + 1]
  elseif name == 'group' then
    group = fields[i + 1]
  elseif name == 'truncated_from' then
    return redis.error_reply('ERR asdlc replay: dead letter ' .. ARGV[1] .. ' kept only part of '
      .. 'its entry (' .. fields[i + 1] .. ' bytes, over the payload cap), so it cannot be '
      .. 'replayed; its original may still be entry ' .. tostring(source_id) .. ' of '
      .. KEYS[2])
  end
end
if #args == 3 then
  return redis.error_reply('ERR asdlc replay: dead letter ' .. ARGV[1] .. ' has no original fields')
end
if not keyed and source_id then
  args[#args + 1] = 'idempotency_key'
  args[#args + 1] = 'entry:' .. source_id
end
if only ~= '' then
  -- Any other group would lose the letter: it skips the copy (it handled the original) or
  -- does not exist, and every other group acknowledges the copy unhandled.
  if only ~= group then
    return redis.error_reply('ERR asdlc replay: dead letter ' .. ARGV[1] .. ' was given up by group '
      .. tostring(group) .. ', not ' .. only .. '; replay it to that group or to every group')
  end
  local exists = false
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
    for j = 1, #g, 2 do
      if g[j] == 'name' and g[j + 1] == only then exists = true end
    end
  end
  if not exists then
    return redis.error_reply('ERR asdlc replay: group ' .. only .. ' does not exist on ' .. KEYS[2])
  end
  args[#args + 1] = only_field
  args[#args + 1] = only
end
local id = redis.call(unpack(args))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
