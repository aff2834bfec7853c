-- Log mirrored calls to shadow arms (they never answer a client): per shadow arm, its
-- calls, errors and latency histogram, and how often it agreed with the served answer.
-- KEYS: ctl, totals, bucket. ARGV: epoch, bucket_expire_at_ms, then per call: the shadow
-- arm's stats name ("shadow/<name>"), flags ("f": it failed), latency bin, equal ("1",
-- "0", or "" when not compared), absolute difference of numeric answers ("" if none).
local refused = stale_epoch()
if refused then
  return refused
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
return 1
