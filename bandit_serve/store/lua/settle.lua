-- Settle decisions whose deadline passed without a reward.
-- KEYS: ctl, totals, due, bucket, then one key per event.
-- ARGV: epoch, now_ms, mode ("default" or "drop"), default reward, bucket_expire_at_ms,
--       then one due-set member ("<event_id>:<arm>") per event key.
-- A member no longer in the due set was rewarded or settled by someone else: skipped.
-- A member whose decision record has already expired is still settled (its arm is in
-- the member). Returns {defaulted, dropped}.
local refused = stale_epoch()
if refused then
  return refused
end
local totals, due, bucket = KEYS[2], KEYS[3], KEYS[4]
local now, mode = tonumber(ARGV[2]), ARGV[3]
local default = tonumber(ARGV[4])
local first_key, first_arg = 5, 6
local deltas = new_deltas()
local ustats = new_units()
local todo = {}
local seen = {}
for i = first_key, #KEYS do
  local key, member = KEYS[i], ARGV[first_arg + i - first_key]
  local score = redis.call('ZSCORE', due, member)
  if score and tonumber(score) < now and not seen[member] then
    seen[member] = true
    local arm = string.match(member, '^[^:]*:(.*)$')
    local rec = redis.call('HMGET', key, 'st', 'p', 'u')
    local st, p, ukey = rec[1], tonumber(rec[2]), rec[3]
    todo[#todo + 1] = {key, member, st}
    if st == false or st == ST.pending then
      if mode == 'drop' then
        deltas:add(arm, 'dropped', 1)
      else
        deltas:reward(arm, default, p)
        deltas:add(arm, 'defaulted', 1)
        if ukey then
          ustats:reward(deltas, ukey, arm, default)
        end
      end
    end
  end
end
local refused_range = deltas:check_range(totals)
if refused_range then
  return refused_range
end
local defaulted, dropped = 0, 0
for _, t in ipairs(todo) do
  redis.call('ZREM', due, t[2])
  if t[3] == ST.pending then
    redis.call('HSET', t[1], 'st', mode == 'drop' and ST.dropped or ST.defaulted)
  end
  if t[3] == false or t[3] == ST.pending then
    if mode == 'drop' then dropped = dropped + 1 else defaulted = defaulted + 1 end
  end
end
ustats:write()
deltas:write(totals, bucket, ARGV[5])
return {defaulted, dropped}
