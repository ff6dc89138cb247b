-- Compare and swap one record: KEYS[1] the table's hash; ARGV[1] the name, ARGV[2] '1' when
-- a value is expected (else the record must be absent), ARGV[3] the expected value,
-- ARGV[4] the new value. Returns 1 when it was set, 0 when the record held something else.
local now = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
  if now ~= ARGV[3] then return 0 end
elseif now then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
return 1
