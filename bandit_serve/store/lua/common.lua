-- Shared helpers, put after the shebang line and the generated prelude (FLOAT_STATS: the
-- float counters of store/base.py's ARM_FIELDS; ST: the EventState codes) and before each
-- script of this folder.
-- Keys of one experiment carry its {name} hash tag, so a script never crosses slots.
-- KEYS[1] of every data script is the experiment's control hash and ARGV[1] the epoch
-- the caller believes current: a script refuses to touch the data of another epoch
-- (STALE_EPOCH <current>), so a reset is atomic for every replica.
-- Arm statistics live in hashes with fields "<arm>:<stat>"; rewards are fixed-point
-- integers of 1e-6 ("units"). Every script runs in two passes: all checks first, then
-- all writes, so a script that is refused or fails never leaves half its writes behind
-- (the "#!lua" shebang makes Redis refuse it up front when memory is short).

local function stale_epoch()
  local cur = redis.call('HGET', KEYS[1], 'epoch') or '0'
  if cur ~= ARGV[1] then
    return redis.error_reply('STALE_EPOCH ' .. cur)
  end
  return nil
end

local function fmt_int(x)
  return string.format('%.0f', x)
end

local function units(r)
  return math.floor(r * 1000000 + 0.5)
end

-- Per-arm deltas gathered during the check pass and written in one go at the end.
local Deltas = {}
Deltas.__index = Deltas

local function new_deltas()
  return setmetatable({arms = {}}, Deltas)
end

function Deltas:add(arm, stat, by)
  local a = self.arms[arm]
  if not a then
    a = {}
    self.arms[arm] = a
  end
  a[stat] = (a[stat] or 0) + by
end

function Deltas:reward(arm, r, p)
  self:add(arm, 'rewards', 1)
  self:add(arm, 'units', units(r))
  self:add(arm, 'sq', r * r)
  if p and p > 0 then
    self:add(arm, 'ipw', r / p)  -- inverse-propensity-weighted reward
  end
end

-- Refuse (before any write) when a running unit total would leave the exact range.
function Deltas:check_range(totals)
  for arm, a in pairs(self.arms) do
    if a.units then
      local cur = tonumber(redis.call('HGET', totals, arm .. ':units') or '0')
      if math.abs(a.units) > 2 ^ 52 or math.abs(cur) + math.abs(a.units) > 9.0e18 then
        return redis.error_reply('reward sum of arm ' .. arm .. ' would overflow')
      end
    end
  end
  return nil
end

function Deltas:write(totals, bucket, bucket_expire_at)
  local any = false
  for arm, a in pairs(self.arms) do
    for stat, by in pairs(a) do
      local field = arm .. ':' .. stat
      if FLOAT_STATS[stat] then
        local v = string.format('%.17g', by)
        redis.call('HINCRBYFLOAT', totals, field, v)
        redis.call('HINCRBYFLOAT', bucket, field, v)
      else
        local v = fmt_int(by)
        redis.call('HINCRBY', totals, field, v)
        redis.call('HINCRBY', bucket, field, v)
      end
      any = true
    end
  end
  if any then
    redis.call('PEXPIREAT', bucket, bucket_expire_at)
  end
end

local function due_member(key, arm)
  return string.match(key, ':ev:(.*)$') .. ':' .. arm
end

-- Unit-level statistics (sticky assignment makes the unit the unit of analysis). A
-- unit's hash holds its arm ('arm'), the propensity of its assignment ('p'), and the
-- count ('n') and sum ('s') of its rewards; each arm keeps the number of its units with
-- a reward ('urew') and the sum and sum of squares of their mean rewards ('umean',
-- 'umean2'), moved by the change of a unit's mean at each reward.
local Units = {}
Units.__index = Units

local function new_units()
  return setmetatable({cache = {}}, Units)
end

function Units:get(ukey)
  local u = self.cache[ukey]
  if not u then
    local rec = redis.call('HMGET', ukey, 'n', 's')
    u = {n = tonumber(rec[1] or '0'), s = tonumber(rec[2] or '0'), dirty = false}
    self.cache[ukey] = u
  end
  return u
end

function Units:reward(deltas, ukey, arm, r)
  local u = self:get(ukey)
  local m0 = 0
  if u.n > 0 then
    m0 = u.s / u.n
  else
    deltas:add(arm, 'urew', 1)
  end
  u.n = u.n + 1
  u.s = u.s + r
  u.dirty = true
  local m1 = u.s / u.n
  deltas:add(arm, 'umean', m1 - m0)
  deltas:add(arm, 'umean2', m1 * m1 - m0 * m0)
end

function Units:write()
  for ukey, u in pairs(self.cache) do
    if u.dirty then
      redis.call('HSET', ukey, 'n', fmt_int(u.n), 's', string.format('%.17g', u.s))
    end
  end
end
