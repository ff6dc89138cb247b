-- llmux admin_v2: an operator's change to one counter (same rules as Counter::apply_admin).
-- Same KEYS and ARGV as v1; v2 writes every count as an integer and returns strings (v1 wrote
-- and returned numbers, `1e+17` from 1e17 on). now_ms is the caller's calendar.
-- KEYS: counter key, index. ARGV: op, now_ms, member, window_start, window_end, capacity,
--       value, linger_ms (how long a counter outlives its window).
-- op: set_used (value) | adjust (value, may be negative) | ttl (value = seconds) |
--     sync (value = custom ttl ms, or -1 for a calendar period).
-- Returns {capacity, used, reserved, window_start, window_end}, as integer strings.
-- Counts are written as integers: a Lua number is a double, and Redis turns one of 1e17 or
-- more into `1e+17`, which is no integer to Redis or to the Rust side.
local function int(x) return string.format('%.0f', x) end
-- A stored capacity is kept as it is written (exact beyond 2^53) unless it is no integer.
local function keep(s) if string.match(s, '^%d+$') then return s end return int(tonumber(s)) end
local op, now = ARGV[1], tonumber(ARGV[2])
local ws, we, v = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
local ttl = tonumber(ARGV[8])
local c = redis.call('HMGET', KEYS[1], 'cap', 'used', 'res', 'ws', 'we')
local ccap = keep(c[1] or ARGV[6])
local used, res = tonumber(c[2] or '0'), tonumber(c[3] or '0')
local cws, cwe = tonumber(c[4] or ws), tonumber(c[5] or we)
local function roll() if now >= cwe then used = 0; cws = ws; cwe = we end end
if op == 'set_used' then
  roll(); used = v
elseif op == 'adjust' then
  roll(); used = used + v; if used < 0 then used = 0 end
elseif op == 'ttl' then
  cws = now; cwe = now + v * 1000
elseif op == 'sync' then
  ccap = ARGV[6]
  if v >= 0 and now < cwe then cwe = cws + v else cws = ws; cwe = we end
else
  return redis.error_reply('unknown op ' .. op)
end
local out = {ccap, int(used), int(res), int(cws), int(cwe)}
redis.call('HSET', KEYS[1], 'cap', out[1], 'used', out[2], 'res', out[3], 'ws', out[4], 'we', out[5])
redis.call('PEXPIRE', KEYS[1], int(math.max(cwe - now, 0) + ttl))
redis.call('SADD', KEYS[2], ARGV[3])
return out
