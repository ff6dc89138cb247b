-- llmux admin_v1: an operator's change to one counter (same rules as Counter::apply_admin).
-- KEYS: counter key, index. ARGV: op, now_ms, member, window_start, window_end, capacity,
--       value, lease_ttl_ms.
-- op: set_used (value) | adjust (value, may be negative) | ttl (value = seconds) |
--     sync (value = custom ttl ms, or -1 for a calendar period).
-- Returns {capacity, used, reserved, window_start, window_end}.
local op, now = ARGV[1], tonumber(ARGV[2])
local ws, we, cap, v = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local ttl = tonumber(ARGV[8])
local c = redis.call('HMGET', KEYS[1], 'cap', 'used', 'res', 'ws', 'we')
local ccap = tonumber(c[1] or cap)
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
  ccap = cap
  if v >= 0 and now < cwe then cwe = cws + v else cws = ws; cwe = we end
else
  return redis.error_reply('unknown op ' .. op)
end
redis.call('HSET', KEYS[1], 'cap', ccap, 'used', used, 'res', res, 'ws', cws, 'we', cwe)
redis.call('PEXPIRE', KEYS[1], math.max(cwe - now, 0) + ttl)
redis.call('SADD', KEYS[2], ARGV[3])
return {ccap, used, res, cws, cwe}
