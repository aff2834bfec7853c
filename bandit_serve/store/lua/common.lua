-- Shared helpers, prepended to every script of this folder when it is registered.
-- Keys of one experiment carry its {name} hash tag, so a script never crosses slots.
-- Arm statistics live in hashes with fields "<arm>:<stat>"; rewards are fixed-point
-- integers of 1e-6 ("units"), formatted with %.0f so Redis sees an exact integer.

local function fmt_int(x)
  return string.format('%.0f', x)
end

local function units(r)
  return fmt_int(math.floor(r * 1000000 + 0.5))
end

-- add to the totals hash and to the current time bucket
local function bump(totals, bucket, arm, stat, by)
  redis.call('HINCRBY', totals, arm .. ':' .. stat, by)
  redis.call('HINCRBY', bucket, arm .. ':' .. stat, by)
end

local function bump_float(totals, bucket, arm, stat, by)
  redis.call('HINCRBYFLOAT', totals, arm .. ':' .. stat, by)
  redis.call('HINCRBYFLOAT', bucket, arm .. ':' .. stat, by)
end

local function add_reward(totals, bucket, arm, r)
  bump(totals, bucket, arm, 'pending', -1)
  bump(totals, bucket, arm, 'rewards', 1)
  bump(totals, bucket, arm, 'units', units(r))
  bump_float(totals, bucket, arm, 'sq', string.format('%.17g', r * r))
end
