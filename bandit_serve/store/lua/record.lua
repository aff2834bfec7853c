-- Log decisions.
-- KEYS: totals, due (zset of "<event_id>:<arm>" scored by deadline ms), bucket, then one
--       key per event.
-- ARGV: now_ms, deadline_ms, record_expire_at_ms, bucket_expire_at_ms, expected counts
--       ("arm=x;arm=y": the policy's probabilities summed over these decisions, added
--       to each arm's "psum" for the sample-ratio check), then per event: arm, propensity.
-- An event key that already exists is left alone (a retried call is a no-op for it).
-- Returns the number of decisions written.
local totals, due, bucket = KEYS[1], KEYS[2], KEYS[3]
local now, deadline = ARGV[1], ARGV[2]
local deltas = new_deltas()
local fresh = {}
for i = 4, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 and not fresh[KEYS[i]] then
    fresh[KEYS[i]] = i
    deltas:add(ARGV[6 + (i - 4) * 2], 'pulls', 1)
  end
end
if next(fresh) ~= nil then  -- a fully retried call adds nothing
  for arm, v in string.gmatch(ARGV[5], '([^;=]+)=([^;]+)') do
    deltas:add(arm, 'psum', tonumber(v))
  end
end
local written = 0
for i = 4, #KEYS do
  local key = KEYS[i]
  if fresh[key] == i then
    local arm, p = ARGV[6 + (i - 4) * 2], ARGV[7 + (i - 4) * 2]
    redis.call('HSET', key, 'arm', arm, 'p', p, 't', now, 'dl', deadline, 'st', ST.pending)
    redis.call('PEXPIREAT', key, ARGV[3])
    redis.call('ZADD', due, deadline, string.match(key, ':ev:(.*)$') .. ':' .. arm)
    written = written + 1
  end
end
deltas:write(totals, bucket, ARGV[4])
return written
