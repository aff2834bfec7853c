-- Log mirrored calls to shadow arms (they never answer a client): per shadow arm, its
-- calls, errors and latency histogram, and how often it agreed with the served answer.
-- KEYS: ctl, totals, bucket, mark (a key named by a token of this batch). ARGV: epoch,
-- bucket_expire_at_ms, then per call: the shadow arm's stats name ("shadow/<name>"),
-- flags ("f": it failed), latency bin, equal ("1", "0", or "" when not compared),
-- absolute difference of numeric answers ("" if none).
-- Safe to run twice: the first run sets the mark, a re-send of the batch finds it and
-- counts nothing (answers 0).
local refused = stale_epoch()
if refused then
  return refused
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return 0
end
local totals, bucket = KEYS[2], KEYS[3]
local deltas = new_deltas()
for a = 3, #ARGV, 5 do
  local arm, flags, bin, equal, diff = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  deltas:add(arm, 'calls', 1)
  deltas:add(arm, 'h' .. bin, 1)
  if string.find(flags, 'f') then
    deltas:add(arm, 'errors', 1)
  end
  if equal ~= '' then
    deltas:add(arm, 'cmp', 1)
    deltas:add(arm, 'agree', tonumber(equal))
  end
  if diff ~= '' then
    deltas:add(arm, 'ncmp', 1)
    deltas:add(arm, 'absdiff', tonumber(diff))
  end
end
deltas:write(totals, bucket, ARGV[2])
redis.call('HSET', KEYS[4], 'n', #ARGV)
redis.call('PEXPIRE', KEYS[4], 60000)
return 1
