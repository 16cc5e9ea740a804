-- Shared by every function of the library (prepended to them).

-- The keys a call declared in KEYS, as a set: a function checks each key it builds itself
-- (a mark hash, a staged effect's key) against it, so it never touches an undeclared key.
local function asdlc_declared(keys)
  local set = {}
  for _, k in ipairs(keys) do set[k] = true end
  return set
end

-- Raises an error unless `key` was declared.
local function asdlc_check_declared(declared, key, what)
  if not declared[key] then
    error(redis.error_reply('ERR asdlc: ' .. what .. ' ' .. key .. ' was not declared in KEYS'))
  end
end
