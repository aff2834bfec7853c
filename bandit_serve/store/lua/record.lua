-- Log decisions.
-- KEYS: totals, due (zset of "<event_id>:<arm>" scored by deadline ms), bucket, then one
--       key per event.
-- ARGV: now_ms, deadline_ms, record_expire_at_ms, bucket_expire_at_ms, then for each
--       event: arm, propensity.
-- An event key that already exists is left alone (a retried call is a no-op for it).
-- Returns the number of decisions written.
local totals, due, bucket = KEYS[1], KEYS[2], KEYS[3]
local now, deadline = ARGV[1], ARGV[2]
local written = 0
for i = 4, #KEYS do
  local key = KEYS[i]
  local arm = ARGV[5 + (i - 4) * 2]
  local p = ARGV[6 + (i - 4) * 2]
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'arm', arm, 'p', p, 't', now, 'dl', deadline, 'st', 'p')
    redis.call('PEXPIREAT', key, ARGV[3])
    local event_id = string.match(key, ':ev:(.*)$')
    redis.call('ZADD', due, deadline, event_id .. ':' .. arm)
    bump(totals, bucket, arm, 'pulls', 1)
    bump(totals, bucket, arm, 'pending', 1)
    written = written + 1
  end
end
if written > 0 then
  redis.call('PEXPIREAT', bucket, ARGV[4])
end
return written
