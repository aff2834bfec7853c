-- Settle decisions whose deadline passed without a reward.
-- KEYS: totals, due, bucket, then one key per event.
-- ARGV: now_ms, mode ("default" or "drop"), default reward, bucket_expire_at_ms, then one
--       due-set member ("<event_id>:<arm>") per event key.
-- A member no longer in the due set was rewarded or settled by someone else: skipped.
-- Returns {defaulted, dropped}.
local totals, due, bucket = KEYS[1], KEYS[2], KEYS[3]
local now, mode = tonumber(ARGV[1]), ARGV[2]
local default = tonumber(ARGV[3])
local defaulted, dropped = 0, 0
for i = 4, #KEYS do
  local key, member = KEYS[i], ARGV[i + 1]
  local score = redis.call('ZSCORE', due, member)
  if score and tonumber(score) < now then
    local arm = string.match(member, '^[^:]*:(.*)$')
    local st = redis.call('HGET', key, 'st')
    redis.call('ZREM', due, member)
    if st == false or st == 'p' then
      if st == 'p' then
        redis.call('HSET', key, 'st', mode == 'drop' and 'x' or 'd')
      end
      if mode == 'drop' then
        bump(totals, bucket, arm, 'pending', -1)
        bump(totals, bucket, arm, 'dropped', 1)
        dropped = dropped + 1
      else
        add_reward(totals, bucket, arm, default)
        bump(totals, bucket, arm, 'defaulted', 1)
        defaulted = defaulted + 1
      end
    end
  end
end
if defaulted + dropped > 0 then
  redis.call('PEXPIREAT', bucket, ARGV[4])
end
return {defaulted, dropped}
