-- llmux reset_v1: forget counters and flags of a subject and everything below it.
-- KEYS: index, flags index. ARGV: subject, counter key prefix, flags key prefix.
-- Returns the number of counters removed.
local s = ARGV[1]
local function matches(subject)
  return subject == s or string.sub(subject, 1, #s + 1) == s .. '/'
end
local n = 0
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local subject = string.match(m, '^(.*)|[^|]*$')
  if subject and matches(subject) then
    n = n + redis.call('DEL', ARGV[2] .. m)
    redis.call('SREM', KEYS[1], m)
  end
end
for _, subject in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if matches(subject) then
    redis.call('DEL', ARGV[3] .. subject)
    redis.call('SREM', KEYS[2], subject)
  end
end
return n
