-- Apply rewards exactly once.
-- KEYS: totals, due, bucket, then one key per event.
-- ARGV: now_ms, low, high, bucket_expire_at_ms, then one reward (a number as text) per
--       event key.
-- For each event every check comes before its first write; the arm comes from the stored
-- decision. Returns one status per event: applied, duplicate, unknown, expired, invalid.
local totals, due, bucket = KEYS[1], KEYS[2], KEYS[3]
local now = tonumber(ARGV[1])
local low, high = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
local touched = false
for i = 4, #KEYS do
  local key = KEYS[i]
  local r = tonumber(ARGV[i + 1])
  local status
  if r == nil or r ~= r or r == math.huge or r == -math.huge or r < low or r > high then
    status = 'invalid'
  else
    local rec = redis.call('HMGET', key, 'arm', 'dl', 'st')
    local arm, dl, st = rec[1], rec[2], rec[3]
    if not arm then
      status = 'unknown'
    elseif st == 'r' then
      status = 'duplicate'
    elseif st ~= 'p' or now > tonumber(dl) then
      status = 'expired'
    else
      status = 'applied'
      redis.call('HSET', key, 'st', 'r')
      redis.call('ZREM', due, string.match(key, ':ev:(.*)$') .. ':' .. arm)
      add_reward(totals, bucket, arm, r)
      touched = true
    end
  end
  out[#out + 1] = status
end
if touched then
  redis.call('PEXPIREAT', bucket, ARGV[4])
end
return out
