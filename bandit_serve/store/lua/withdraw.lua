-- Withdraw decisions that no client holds an id for (the answer could not be sent).
-- KEYS: ctl, totals, due, bucket, then one key per event.
-- ARGV: epoch, now_ms, bucket_expire_at_ms.
-- Only a decision still waiting for its reward is withdrawn; anything else is left alone.
-- Returns how many were withdrawn.
local refused = stale_epoch()
if refused then
  return refused
end
local totals, due, bucket = KEYS[2], KEYS[3], KEYS[4]
local deltas = new_deltas()
local todo = {}
for i = 5, #KEYS do
  local rec = redis.call('HMGET', KEYS[i], 'arm', 'st')
  if rec[1] and rec[2] == ST.pending and not todo[KEYS[i]] then
    todo[KEYS[i]] = rec[1]
    deltas:add(rec[1], 'withdrawn', 1)
  end
end
local n = 0
for key, arm in pairs(todo) do
  redis.call('HSET', key, 'st', ST.withdrawn)
  redis.call('ZREM', due, due_member(key, arm))
  n = n + 1
end
deltas:write(totals, bucket, ARGV[3])
return n
