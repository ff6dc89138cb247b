-- llmux reset_v1: forget counters and flags of a subject and everything below it.
-- KEYS: index, flags index, leases. ARGV: subject, counter key prefix, flags key prefix.
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
-- Leases in flight must not give back amounts on counters that no longer exist.
local function gone(key)
  local m = string.sub(key, #ARGV[2] + 1)
  local subject = string.match(m, '^(.*)|[^|]*$')
  return subject ~= nil and matches(subject)
end
local leases = redis.call('HGETALL', KEYS[3])
for i = 1, #leases, 2 do
  local kept = {}
  local changed = false
  for k, a in string.gmatch(leases[i + 1], '([^\t\n]+)\t(%d+)') do
    if gone(k) then changed = true else kept[#kept + 1] = k .. '\t' .. a end
  end
  if changed then redis.call('HSET', KEYS[3], leases[i], table.concat(kept, '\n')) end
end
for _, subject in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if matches(subject) then
    redis.call('DEL', ARGV[3] .. subject)
    redis.call('SREM', KEYS[2], subject)
  end
end
return n
