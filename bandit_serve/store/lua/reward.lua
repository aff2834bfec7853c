-- Apply rewards exactly once.
-- KEYS: ctl, totals, due, bucket, then one key per event.
-- ARGV: epoch, now_ms, low, high, bucket_expire_at_ms, then one reward (a number as text)
--       per event key.
-- The arm comes from the stored decision. Returns one status per event, in order:
-- applied, duplicate, unknown, expired or invalid.
local refused = stale_epoch()
if refused then
  return refused
end
local totals, due, bucket = KEYS[2], KEYS[3], KEYS[4]
local now = tonumber(ARGV[2])
local low, high = tonumber(ARGV[3]), tonumber(ARGV[4])
local first_key, first_arg = 5, 6
local out, apply = {}, {}
local deltas = new_deltas()
local ustats = new_units()
local taken = {}
for i = first_key, #KEYS do
  local key = KEYS[i]
  local r = tonumber(ARGV[first_arg + i - first_key])
  local status
  if r == nil or r ~= r or r == math.huge or r == -math.huge or r < low or r > high then
    status = 'invalid'
  else
    local rec = redis.call('HMGET', key, 'arm', 'dl', 'st', 'p', 'u')
    local arm, dl, st, p, ukey = rec[1], rec[2], rec[3], tonumber(rec[4]), rec[5]
    if not arm then
      status = 'unknown'
    elseif st == ST.rewarded or taken[key] then
      status = 'duplicate'
      deltas:add(arm, 'dup', 1)
    elseif st ~= ST.pending or now > tonumber(dl) then
      status = 'expired'
      deltas:add(arm, 'late', 1)
    else
      status = 'applied'
      taken[key] = true
      apply[#apply + 1] = {key, arm}
      deltas:reward(arm, r, p)
      if ukey then
        ustats:reward(deltas, ukey, arm, r)
      end
    end
  end
  out[#out + 1] = status
end
local refused_range = deltas:check_range(totals)
if refused_range then
  return refused_range
end
-- writes
for _, a in ipairs(apply) do
  redis.call('HSET', a[1], 'st', ST.rewarded)
  redis.call('ZREM', due, due_member(a[1], a[2]))
end
ustats:write()
deltas:write(totals, bucket, ARGV[5])
return out
