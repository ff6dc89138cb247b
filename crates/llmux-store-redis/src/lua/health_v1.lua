-- llmux health_v1: apply one health change to a subject's flags, by the rules of
-- llmux_core::health (`Flags::apply_health`), and return the flags after.
-- KEYS: flags key, flags index.
-- ARGV: subject, op, then by op:
--   'cool':    now_ms, hint_ms (-1: none), base_ms, factor, max_ms
--              (a 429: the growing cooldown; a 429 while cooling adds no strike)
--   'breaker': open_until_ms (-1: close)
--   'learn':   per measure (requests, tokens, input tokens, output tokens): limit, remaining,
--              reset_ms, or three empty strings to keep that measure as it is
-- Returns the HMGET of FIELDS (below), the order `RedisStore` reads flags in.
local k = KEYS[1]
local op = ARGV[2]
local function int(x) return string.format('%.0f', x) end
if op == 'cool' then
  local now, hint = tonumber(ARGV[3]), tonumber(ARGV[4])
  local base, factor, max = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local function len(s)
    local x = base * factor ^ (s - 1)
    if x < max then return math.max(math.floor(x), 0) end
    return max
  end
  local f = redis.call('HMGET', k, 'cool', 'strk')
  local cool = f[1] and tonumber(f[1])
  local strikes = tonumber(f[2] or '0')
  if not (cool and cool > now) then
    local streak = strikes > 0 and cool ~= nil and now <= cool + len(strikes + 1)
    if streak then strikes = strikes + 1 else strikes = 1 end
  end
  local untl = now + len(math.max(strikes, 1))
  if hint >= 0 and hint > untl then untl = hint end
  if cool and cool > untl then untl = cool end
  redis.call('HSET', k, 'cool', int(untl), 'strk', int(strikes))
elseif op == 'breaker' then
  local u = tonumber(ARGV[3])
  if u >= 0 then
    redis.call('HSET', k, 'bu', int(u), 'pr', '0')
  else
    redis.call('HDEL', k, 'bu')
    redis.call('HSET', k, 'pr', '0')
  end
elseif op == 'learn' then
  for m = 1, 4 do
    local b = 3 + (m - 1) * 3
    if ARGV[b] ~= '' then
      redis.call('HSET', k, 'll' .. m, ARGV[b], 'lr' .. m, ARGV[b + 1], 'lt' .. m, ARGV[b + 2])
    end
  end
else
  return redis.error_reply('health_v1: unknown op ' .. tostring(op))
end
redis.call('SADD', KEYS[2], ARGV[1])
return redis.call('HMGET', k, 'cool', 'dis', 'score', 'strk', 'bu', 'pr',
  'll1', 'lr1', 'lt1', 'll2', 'lr2', 'lt2', 'll3', 'lr3', 'lt3', 'll4', 'lr4', 'lt4')
