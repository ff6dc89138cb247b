-- llmux cooldown_v1: cool a subject down until ARGV[1] (ms), never shortening a longer one.
-- KEYS: flags key, flags index. ARGV: until_ms, subject.
local cur = tonumber(redis.call('HGET', KEYS[1], 'cool') or '0')
local u = tonumber(ARGV[1])
if u > cur then redis.call('HSET', KEYS[1], 'cool', u) end
redis.call('SADD', KEYS[2], ARGV[2])
return 1
