-- Cancel decisions whose model call failed: they will never get a reward.
-- KEYS: totals, due, bucket, then one key per event.
-- ARGV: now_ms, bucket_expire_at_ms.
-- Only a decision still waiting for its reward is cancelled (counted as an error of its
-- arm); anything else is left alone. Returns how many were cancelled.
local totals, due, bucket = KEYS[1], KEYS[2], KEYS[3]
local deltas = new_deltas()
local todo = {}
for i = 4, #KEYS do
  local rec = redis.call('HMGET', KEYS[i], 'arm', 'st')
  if rec[1] and rec[2] == ST.pending and not todo[KEYS[i]] then
    todo[KEYS[i]] = rec[1]
    deltas:add(rec[1], 'errors', 1)
  end
end
local n = 0
for key, arm in pairs(todo) do
  redis.call('HSET', key, 'st', ST.withdrawn)
  redis.call('ZREM', due, string.match(key, ':ev:(.*)$') .. ':' .. arm)
  n = n + 1
end
deltas:write(totals, bucket, ARGV[2])
return n
