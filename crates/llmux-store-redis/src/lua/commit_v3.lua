-- llmux commit_v3: swap a lease's reservation for the usage reported (even if the lease has
-- expired), release lines not reported, and end score overrides of subjects whose usage changed.
-- A counter keeps its stored capacity (an operator may have changed it since the lease was
-- granted); only a counter the commit creates takes the line's. Same KEYS and ARGV as v2; v3
-- writes every count as an integer (the capacity as the caller's string).
-- now_ms is the caller's: window rolls and counter expiry are the caller's calendar.
-- KEYS: leases, lease_expiry, index, then n counter keys, then n flag keys (one per line).
-- ARGV: lease_id, now_ms, n, linger_ms (how long a counter outlives its window), then per
--       line: member, window_start, window_end, capacity, amount_used.
-- Counts are written as integers: a Lua number is a double, and Redis turns one of 1e17 or
-- more into `1e+17`, which is no integer to Redis or to the Rust side (v2 wrote numbers).
local function int(x) return string.format('%.0f', x) end
local id = ARGV[1]
local now = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])

local held = {}
local rec = redis.call('HGET', KEYS[1], id)
if rec then
  for k, a in string.gmatch(rec, '([^\t\n]+)\t(%d+)') do held[k] = tonumber(a) end
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end

for i = 1, n do
  local b = 4 + (i - 1) * 5
  local ws, we = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local amt = tonumber(ARGV[b + 5])
  local k = KEYS[3 + i]
  local c = redis.call('HMGET', k, 'used', 'res', 'ws', 'we')
  local used, res = tonumber(c[1] or '0'), tonumber(c[2] or '0')
  local cws, cwe = tonumber(c[3] or ws), tonumber(c[4] or we)
  if now >= cwe then used = 0; cws = ws; cwe = we end
  res = res - (held[k] or 0)
  held[k] = nil
  if res < 0 then res = 0 end
  if not c[3] then redis.call('HSET', k, 'cap', ARGV[b + 4]) end
  redis.call('HSET', k, 'used', int(used + amt), 'res', int(res), 'ws', int(cws), 'we', int(cwe))
  redis.call('PEXPIRE', k, int(math.max(cwe - now, 0) + ttl))
  redis.call('SADD', KEYS[3], ARGV[b + 1])
  redis.call('HDEL', KEYS[3 + n + i], 'score')
end

for k, a in pairs(held) do
  if redis.call('EXISTS', k) == 1 then
    local r = tonumber(redis.call('HGET', k, 'res') or '0') - a
    if r < 0 then r = 0 end
    redis.call('HSET', k, 'res', int(r))
  end
end
return 1
