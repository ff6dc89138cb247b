-- llmux reserve_v4: check every line and gate, then write all or nothing, under the lease id
-- the caller chose, so a caller that stops waiting can release it.
-- Versioned name: a rolling deploy may run two versions of llmux on one Redis; a changed
-- script gets a new name instead of changing meaning under old callers. v4 adds the health
-- gates of llmux_core::health (circuit breakers with bounded half-open probes, and learned
-- limits that each reservation takes its share of); v3 checked cooldown and disabled only.
--
-- Two clocks. Lease expiry is bookkeeping between replicas: it uses the server's TIME, one
-- clock for every replica, so a replica whose clock runs ahead cannot expire the leases of
-- the others (and one that runs behind cannot keep its own forever). A lease lives
-- lease_ttl_ms of server time. The caller's now_ms is for what the caller computed from its
-- calendar: the window a line belongs to, the roll check `now >= window_end`, cooldowns,
-- breakers, learned resets and counter expiry after their window.
-- Uses TIME before writing, so it needs effects replication (the default since Redis 5).
-- Counts in a denial are strings (integers of any size); retry_at is a number.
--
-- KEYS: seq (unused since v2), leases, lease_expiry, index, then nl counter keys, then ng flag
--       keys.
-- ARGV: now_ms, lease_ttl_ms, nl, ng, lease_id, probes, open_ms, then the request's share of
--       the four learned limits (requests, tokens, input tokens, output tokens), then per
--       line: member, window_start, window_end, capacity, amount.
-- A lease id already held is granted again without reserving twice (a retried call).
-- Returns {1, lease_id, room...}, {2, lease_id, room...} (granted as a half-open breaker's
-- probe; room: what each line has left, as integer strings) or
-- {0, kind, line_or_gate, capacity, used, reserved, amount, retry_at, measure}.
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local nl = tonumber(ARGV[3])
local ng = tonumber(ARGV[4])
local id = ARGV[5]
local probes = math.max(tonumber(ARGV[6]), 1)
local open_ms = tonumber(ARGV[7])
local LB = 11 -- ARGV index before the first line's fields
-- Counts are written as integers: a Lua number is a double, and Redis turns one of 1e17 or
-- more into `1e+17`, which is no integer to Redis or to the Rust side. Capacities and amounts
-- are written as the caller's strings, exactly; sums are exact up to 2^53.
local function int(x) return string.format('%.0f', x) end
local t = redis.call('TIME')
local server_now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function release(id)
  local rec = redis.call('HGET', KEYS[2], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  if not rec then return end
  for k, a in string.gmatch(rec, '([^\t\n]+)\t(%d+)') do
    if redis.call('EXISTS', k) == 1 then
      local r = tonumber(redis.call('HGET', k, 'res') or '0') - tonumber(a)
      if r < 0 then r = 0 end
      redis.call('HSET', k, 'res', int(r))
    end
  end
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', server_now, 'LIMIT', 0, 100)) do
  release(id)
end

if redis.call('HEXISTS', KEYS[2], id) == 1 then return {1, id} end

-- Gates: disabled, cooldown, breaker, learned limits (llmux_core::health::check_gate).
local gate_writes = {}
for g = 1, ng do
  local f = redis.call('HMGET', KEYS[4 + nl + g], 'dis', 'cool', 'bu', 'pr',
    'll1', 'lr1', 'lt1', 'll2', 'lr2', 'lt2', 'll3', 'lr3', 'lt3', 'll4', 'lr4', 'lt4')
  if f[1] == '1' then return {0, 'disabled', g, 0, 0, 0, 0, -1} end
  if f[2] and tonumber(f[2]) > now then return {0, 'cooldown', g, 0, 0, 0, 0, tonumber(f[2])} end
  local half = false
  if f[3] then
    local bu = tonumber(f[3])
    if now < bu then return {0, 'breaker', g, 0, 0, 0, 0, bu} end
    half = true
  end
  local takes = {}
  for m = 1, 4 do
    local ll, lr, lt = f[5 + (m - 1) * 3], f[6 + (m - 1) * 3], f[7 + (m - 1) * 3]
    local amt = tonumber(ARGV[7 + m])
    if ll and lr and lt and tonumber(lt) > now then
      local left = tonumber(lr)
      if amt > left then
        return {0, 'learned', g, ll, int(math.max(tonumber(ll) - left, 0)), '0', int(amt),
          tonumber(lt), m}
      end
      if amt > 0 then takes[#takes + 1] = {'lr' .. m, int(left - amt)} end
    end
  end
  gate_writes[g] = {takes, half, tonumber(f[4] or '0')}
end

local state = {}
local worst = nil
for i = 1, nl do
  local b = LB + (i - 1) * 5
  local ws, we = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local cap, amt = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local c = redis.call('HMGET', KEYS[4 + i], 'used', 'res', 'ws', 'we')
  local used, res = tonumber(c[1] or '0'), tonumber(c[2] or '0')
  local cws, cwe = tonumber(c[3] or ws), tonumber(c[4] or we)
  -- A new counter, or a new window: its place in the index is (re)set below.
  local fresh = not c[3]
  if now >= cwe then used = 0; cws = ws; cwe = we; fresh = true end
  state[i] = {used, res, cws, cwe, ARGV[b + 4], ARGV[b + 5], fresh, amt}
  if used + res + amt > cap then
    local d
    if amt > cap then
      d = {0, 'never', i, ARGV[b + 4], int(used), int(res), ARGV[b + 5], -1}
    else
      d = {0, 'exhausted', i, ARGV[b + 4], int(used), int(res), ARGV[b + 5], cwe}
    end
    if worst == nil or (worst[8] ~= -1 and (d[8] == -1 or d[8] > worst[8])) then worst = d end
  end
end
if worst then return worst end

local rec = {}
for i = 1, nl do
  local s = state[i]
  local k = KEYS[4 + i]
  redis.call('HSET', k, 'cap', s[5], 'used', int(s[1]), 'res', int(s[2] + s[8]), 'ws', int(s[3]),
    'we', int(s[4]))
  redis.call('PEXPIRE', k, int(math.max(s[4] - now, 0) + ttl))
  if s[7] then
    -- A counter already in its window is in the index.
    redis.call('SADD', KEYS[4], ARGV[LB + (i - 1) * 5 + 1])
  end
  rec[#rec + 1] = k .. '\t' .. s[6]
end
local probe = false
for g = 1, ng do
  local w = gate_writes[g]
  local k = KEYS[4 + nl + g]
  for _, t in ipairs(w[1]) do redis.call('HSET', k, t[1], t[2]) end
  if w[2] then
    probe = true
    local pr = w[3] + 1
    if pr >= probes then
      redis.call('HSET', k, 'bu', int(now + open_ms), 'pr', '0')
    else
      redis.call('HSET', k, 'pr', int(pr))
    end
  end
end
redis.call('HSET', KEYS[2], id, table.concat(rec, '\n'))
redis.call('ZADD', KEYS[3], server_now + ttl, id)
-- The room each line has left, this grant included.
local out = {1, id}
if probe then out[1] = 2 end
for i = 1, nl do
  local st = state[i]
  out[#out + 1] = int(math.max(tonumber(st[5]) - st[1] - st[2] - st[8], 0))
end
return out
