-- llmux release_v2: give a lease's reservation back untouched. Same KEYS and ARGV as v1; v2
-- writes `res` as an integer (v1 wrote a number, `1e+17` from 1e17 on).
-- KEYS: leases, lease_expiry. ARGV: lease_id.
local function int(x) return string.format('%.0f', x) end
local rec = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if not rec then return 0 end
for k, a in string.gmatch(rec, '([^\t\n]+)\t(%d+)') do
  if redis.call('EXISTS', k) == 1 then
    local r = tonumber(redis.call('HGET', k, 'res') or '0') - tonumber(a)
    if r < 0 then r = 0 end
    redis.call('HSET', k, 'res', int(r))
  end
end
return 1
