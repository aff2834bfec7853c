-- Read an experiment: its control hash, and when ARGV[1] is the current epoch, the
-- totals and the restore marks of that epoch.
-- KEYS: ctl, totals, since. ARGV: epoch.
-- Returns {ctl fields, totals fields, since fields} (flat lists); only {ctl fields} when
-- the epoch has moved on (the caller reads again with the new one).
local ctl = redis.call('HGETALL', KEYS[1])
local cur = redis.call('HGET', KEYS[1], 'epoch') or '0'
if cur ~= ARGV[1] then
  return {ctl}
end
return {ctl, redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])}
